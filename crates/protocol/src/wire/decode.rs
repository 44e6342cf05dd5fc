//! Reading batches in every encoding vLLM has used: events as tagged maps or as
//! positional arrays, the batch as an array or (one vLLM snapshot) a map, hashes as
//! integers (signed or unsigned) or bytes. Unknown map keys and extra trailing array
//! fields are ignored, so newer vLLM versions that add fields still decode.

use super::{EngineHash, ExtraKey, RemovedBlocks, StoredBlocks, WireBatch, WireError, WireEvent};
use rmpv::Value;

/// Decode one msgpack batch.
pub fn decode_batch(payload: &[u8]) -> Result<WireBatch, WireError> {
    let v = rmpv::decode::read_value(&mut &payload[..])
        .map_err(|e| WireError::Msgpack(e.to_string()))?;
    let (ts, events, rank) = match &v {
        Value::Array(a) => (a.first(), a.get(1), a.get(2)),
        Value::Map(m) => (get(m, "ts"), get(m, "events"), get(m, "data_parallel_rank")),
        other => {
            return Err(shape(format!(
                "batch is {}, not an array or map",
                kind(other)
            )))
        }
    };
    let ts = match ts {
        Some(Value::F64(t)) => *t,
        Some(Value::F32(t)) => f64::from(*t),
        Some(Value::Integer(i)) => i.as_f64().unwrap_or(0.0),
        other => return Err(shape(format!("batch ts is {}", opt_kind(other)))),
    };
    let events = match events {
        Some(Value::Array(evs)) => evs.iter().map(decode_event).collect::<Result<_, _>>()?,
        other => return Err(shape(format!("batch events is {}", opt_kind(other)))),
    };
    let data_parallel_rank = match rank {
        None | Some(Value::Nil) => None,
        Some(Value::Integer(i)) => i.as_i64(),
        Some(other) => return Err(shape(format!("data_parallel_rank is {}", kind(other)))),
    };
    Ok(WireBatch {
        ts,
        events,
        data_parallel_rank,
    })
}

fn decode_event(v: &Value) -> Result<WireEvent, WireError> {
    // A positional event is read through the same field lookup as a map, by index.
    enum Ev<'a> {
        Map(&'a [(Value, Value)]),
        Arr(&'a [Value]),
    }
    let (ev, tag) = match v {
        Value::Map(m) => (Ev::Map(m), get(m, "type")),
        Value::Array(a) => (Ev::Arr(a), a.first()),
        other => return Err(shape(format!("event is {}", kind(other)))),
    };
    let tag = match tag {
        Some(Value::String(s)) => s.as_str().unwrap_or_default(),
        other => return Err(shape(format!("event tag is {}", opt_kind(other)))),
    };
    // Positions of vLLM's fields in the array encoding (after the tag).
    let field = |name: &str, pos: usize| -> Option<&Value> {
        let v = match &ev {
            Ev::Map(m) => get(m, name),
            Ev::Arr(a) => a.get(pos),
        };
        v.filter(|v| !v.is_nil())
    };
    match tag {
        "BlockStored" => {
            let block_hashes = hashes(field("block_hashes", 1), "block_hashes")?;
            let parent_block_hash = field("parent_block_hash", 2)
                .map(|v| hash(v, "parent_block_hash"))
                .transpose()?;
            let token_ids = match field("token_ids", 3) {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|t| {
                        t.as_u64()
                            .and_then(|t| u32::try_from(t).ok())
                            .ok_or_else(|| shape("token_ids holds a non-token value"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                other => return Err(shape(format!("token_ids is {}", opt_kind(other)))),
            };
            let block_size = match field("block_size", 4).and_then(Value::as_u64) {
                Some(b) if b > 0 => b as usize,
                _ => return Err(shape("block_size is missing or not a positive integer")),
            };
            let lora_id = field("lora_id", 5).and_then(Value::as_i64);
            let medium = field("medium", 6)
                .and_then(Value::as_str)
                .map(str::to_string);
            let lora_name = field("lora_name", 7)
                .and_then(Value::as_str)
                .map(str::to_string);
            let extra_keys = field("extra_keys", 8).map(extra_keys).transpose()?;
            Ok(WireEvent::BlockStored(StoredBlocks {
                block_hashes,
                parent_block_hash,
                token_ids,
                block_size,
                lora_id,
                medium,
                lora_name,
                extra_keys,
            }))
        }
        "BlockRemoved" => Ok(WireEvent::BlockRemoved(RemovedBlocks {
            block_hashes: hashes(field("block_hashes", 1), "block_hashes")?,
            medium: field("medium", 2)
                .and_then(Value::as_str)
                .map(str::to_string),
        })),
        "AllBlocksCleared" => Ok(WireEvent::AllBlocksCleared),
        other => Ok(WireEvent::Unknown(other.to_string())),
    }
}

fn hashes(v: Option<&Value>, what: &str) -> Result<Vec<EngineHash>, WireError> {
    match v {
        Some(Value::Array(a)) => a.iter().map(|h| hash(h, what)).collect(),
        other => Err(shape(format!("{what} is {}", opt_kind(other)))),
    }
}

fn hash(v: &Value, what: &str) -> Result<EngineHash, WireError> {
    match v {
        Value::Integer(i) => i
            .as_u64()
            .or_else(|| i.as_i64().map(|x| x as u64))
            .map(EngineHash::Int)
            .ok_or_else(|| shape(format!("{what}: integer out of range"))),
        Value::Binary(b) => Ok(EngineHash::Bytes(b.clone().into_boxed_slice())),
        other => Err(shape(format!("{what} holds {}", kind(other)))),
    }
}

fn extra_keys(v: &Value) -> Result<Vec<Option<Vec<ExtraKey>>>, WireError> {
    let Value::Array(blocks) = v else {
        return Err(shape(format!("extra_keys is {}", kind(v))));
    };
    Ok(blocks
        .iter()
        .map(|b| match b {
            Value::Array(keys) => Some(
                keys.iter()
                    .map(|k| match k {
                        Value::String(s) => s
                            .as_str()
                            .map_or(ExtraKey::Other, |s| ExtraKey::Str(s.to_string())),
                        Value::Integer(i) => i.as_i64().map_or(ExtraKey::Other, ExtraKey::Int),
                        Value::Binary(b) => ExtraKey::Bytes(b.clone()),
                        _ => ExtraKey::Other,
                    })
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

fn get<'a>(m: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn shape(msg: impl Into<String>) -> WireError {
    WireError::Shape(msg.into())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Boolean(_) => "a boolean",
        Value::Integer(_) => "an integer",
        Value::F32(_) | Value::F64(_) => "a float",
        Value::String(_) => "a string",
        Value::Binary(_) => "bytes",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        Value::Ext(..) => "an extension value",
    }
}

fn opt_kind(v: Option<&Value>) -> &'static str {
    v.map_or("missing", kind)
}

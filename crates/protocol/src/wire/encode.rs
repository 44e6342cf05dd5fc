//! Writing batches exactly as vLLM's msgspec structs do: the batch as an array
//! `[ts, events, data_parallel_rank]`; events as maps with `"type"` first and every
//! field without a default (the `None`s too), `extra_keys` only when set; or as
//! positional arrays with the tag first and every field. Integers take msgpack's
//! shortest form and `ts` is always a float64, as msgspec writes them.

use super::{EngineHash, EventFormat, ExtraKey, StoredBlocks, WireBatch, WireEvent};
use rmp::encode as w;

/// Encode `batch` with its events in `format`.
pub fn encode_batch(batch: &WireBatch, format: EventFormat) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 8 * batch.events.len());
    // Writing into a Vec cannot fail: the results are infallible `Ok`s.
    let _ = w::write_array_len(&mut out, 3);
    let _ = w::write_f64(&mut out, batch.ts);
    let _ = w::write_array_len(&mut out, len32(batch.events.len()));
    for ev in &batch.events {
        event(&mut out, ev, format);
    }
    match batch.data_parallel_rank {
        Some(r) => int(&mut out, r),
        None => nil(&mut out),
    }
    out
}

fn event(out: &mut Vec<u8>, ev: &WireEvent, format: EventFormat) {
    match (ev, format) {
        (WireEvent::BlockStored(s), EventFormat::Map) => {
            let _ = w::write_map_len(out, if s.extra_keys.is_some() { 9 } else { 8 });
            key(out, "type");
            str(out, "BlockStored");
            key(out, "block_hashes");
            hashes(out, &s.block_hashes);
            key(out, "parent_block_hash");
            opt_hash(out, s.parent_block_hash.as_ref());
            key(out, "token_ids");
            tokens(out, s);
            key(out, "block_size");
            uint(out, s.block_size as u64);
            key(out, "lora_id");
            opt_int(out, s.lora_id);
            key(out, "medium");
            opt_str(out, s.medium.as_deref());
            key(out, "lora_name");
            opt_str(out, s.lora_name.as_deref());
            if let Some(x) = &s.extra_keys {
                key(out, "extra_keys");
                extra_keys(out, x);
            }
        }
        (WireEvent::BlockStored(s), EventFormat::Array) => {
            // Tag, 7 fields, extra_keys, then group_idx, kv_cache_spec_kind and
            // kv_cache_spec_sliding_window (not used by reprise: nil).
            let _ = w::write_array_len(out, 12);
            str(out, "BlockStored");
            hashes(out, &s.block_hashes);
            opt_hash(out, s.parent_block_hash.as_ref());
            tokens(out, s);
            uint(out, s.block_size as u64);
            opt_int(out, s.lora_id);
            opt_str(out, s.medium.as_deref());
            opt_str(out, s.lora_name.as_deref());
            match &s.extra_keys {
                Some(x) => extra_keys(out, x),
                None => nil(out),
            }
            for _ in 0..3 {
                nil(out);
            }
        }
        (WireEvent::BlockRemoved(r), EventFormat::Map) => {
            let _ = w::write_map_len(out, 3);
            key(out, "type");
            str(out, "BlockRemoved");
            key(out, "block_hashes");
            hashes(out, &r.block_hashes);
            key(out, "medium");
            opt_str(out, r.medium.as_deref());
        }
        (WireEvent::BlockRemoved(r), EventFormat::Array) => {
            // Tag, block_hashes, medium, group_idx.
            let _ = w::write_array_len(out, 4);
            str(out, "BlockRemoved");
            hashes(out, &r.block_hashes);
            opt_str(out, r.medium.as_deref());
            nil(out);
        }
        (WireEvent::AllBlocksCleared, EventFormat::Map) => {
            let _ = w::write_map_len(out, 1);
            key(out, "type");
            str(out, "AllBlocksCleared");
        }
        (WireEvent::AllBlocksCleared, EventFormat::Array) => {
            let _ = w::write_array_len(out, 1);
            str(out, "AllBlocksCleared");
        }
        // Never produced by reprise's publisher; keep the batch well formed.
        (WireEvent::Unknown(tag), EventFormat::Map) => {
            let _ = w::write_map_len(out, 1);
            key(out, "type");
            str(out, tag);
        }
        (WireEvent::Unknown(tag), EventFormat::Array) => {
            let _ = w::write_array_len(out, 1);
            str(out, tag);
        }
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn key(out: &mut Vec<u8>, k: &str) {
    str(out, k);
}

fn str(out: &mut Vec<u8>, s: &str) {
    let _ = w::write_str(out, s);
}

fn nil(out: &mut Vec<u8>) {
    let _ = w::write_nil(out);
}

fn uint(out: &mut Vec<u8>, v: u64) {
    let _ = w::write_uint(out, v);
}

fn int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        uint(out, v as u64);
    } else {
        let _ = w::write_sint(out, v);
    }
}

fn opt_int(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(v) => int(out, v),
        None => nil(out),
    }
}

fn opt_str(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(s) => str(out, s),
        None => nil(out),
    }
}

fn hash(out: &mut Vec<u8>, h: &EngineHash) {
    match h {
        EngineHash::Int(v) => uint(out, *v),
        EngineHash::Bytes(b) => {
            let _ = w::write_bin(out, b);
        }
    }
}

fn opt_hash(out: &mut Vec<u8>, h: Option<&EngineHash>) {
    match h {
        Some(h) => hash(out, h),
        None => nil(out),
    }
}

fn hashes(out: &mut Vec<u8>, hs: &[EngineHash]) {
    let _ = w::write_array_len(out, len32(hs.len()));
    for h in hs {
        hash(out, h);
    }
}

fn tokens(out: &mut Vec<u8>, s: &StoredBlocks) {
    let _ = w::write_array_len(out, len32(s.token_ids.len()));
    for &t in &s.token_ids {
        uint(out, u64::from(t));
    }
}

fn extra_keys(out: &mut Vec<u8>, x: &[Option<Vec<ExtraKey>>]) {
    let _ = w::write_array_len(out, len32(x.len()));
    for block in x {
        match block {
            None => nil(out),
            Some(keys) => {
                let _ = w::write_array_len(out, len32(keys.len()));
                for k in keys {
                    match k {
                        ExtraKey::Str(s) => str(out, s),
                        ExtraKey::Int(i) => int(out, *i),
                        ExtraKey::Bytes(b) => {
                            let _ = w::write_bin(out, b);
                        }
                        ExtraKey::Other => nil(out),
                    }
                }
            }
        }
    }
}

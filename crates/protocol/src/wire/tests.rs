//! The codec against frames captured from vLLM's own structs
//! (`tests/data/kv-events/`, copied from the project's shared fixtures).

use super::*;
use serde_json::Value;

pub(crate) fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/kv-events/vllm_events_public.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("fixture json")
}

pub(crate) fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// `(seq, payload)` of every frame of one variant.
pub(crate) fn frames(f: &Value, variant: &str) -> Vec<(u64, Vec<u8>)> {
    f["variants"][variant]
        .as_array()
        .expect("variant")
        .iter()
        .map(|fr| {
            let seq = parse_seq(&hex(fr["seq"].as_str().expect("seq"))).expect("8-byte seq");
            (seq, hex(fr["payload"].as_str().expect("payload")))
        })
        .collect()
}

const VARIANTS: [&str; 6] = [
    "legacy-int",
    "legacy-bytes",
    "map-int",
    "map-bytes",
    "mapmap-int",
    "mapmap-bytes",
];

fn events_of(f: &Value, variant: &str) -> Vec<WireEvent> {
    frames(f, variant)
        .iter()
        .flat_map(|(_, p)| decode_batch(p).expect(variant).events)
        .collect()
}

#[test]
fn every_variant_decodes_with_contiguous_seqs_and_the_topic() {
    let f = fixture();
    let topic = hex(f["variants"]["map-int"][0]["topic"].as_str().unwrap());
    assert_eq!(topic, f["topic"].as_str().unwrap().as_bytes());
    for v in VARIANTS {
        let fr = frames(&f, v);
        for (i, (seq, payload)) in fr.iter().enumerate() {
            assert_eq!(*seq, i as u64, "{v}");
            let b = decode_batch(payload).unwrap_or_else(|e| panic!("{v} #{i}: {e}"));
            assert!(b.ts > 1.7e9, "{v}: ts {}", b.ts);
            assert_eq!(b.data_parallel_rank, Some(0), "{v}");
        }
        let evs = events_of(&f, v);
        assert_eq!(evs.last(), Some(&WireEvent::AllBlocksCleared), "{v}");
        assert!(
            evs.iter().all(|e| !matches!(e, WireEvent::Unknown(_))),
            "{v}"
        );
    }
}

#[test]
fn the_three_encodings_carry_the_same_history() {
    let f = fixture();
    for hashes in ["int", "bytes"] {
        let legacy = events_of(&f, &format!("legacy-{hashes}"));
        assert_eq!(legacy, events_of(&f, &format!("map-{hashes}")), "{hashes}");
        assert_eq!(
            legacy,
            events_of(&f, &format!("mapmap-{hashes}")),
            "{hashes}"
        );
    }
    // Integer hashes are the low 64 bits of the digests, big-endian as vLLM takes them.
    let ints = events_of(&f, "map-int");
    let bytes = events_of(&f, "map-bytes");
    let hashes = |evs: &[WireEvent]| -> Vec<EngineHash> {
        evs.iter()
            .flat_map(|e| match e {
                WireEvent::BlockStored(s) => s.block_hashes.clone(),
                WireEvent::BlockRemoved(r) => r.block_hashes.clone(),
                _ => Vec::new(),
            })
            .collect()
    };
    for (i, b) in hashes(&ints).iter().zip(hashes(&bytes)) {
        let EngineHash::Bytes(b) = b else {
            panic!("bytes variant holds {b:?}")
        };
        assert_eq!(b.len(), 32);
        let low = u64::from_be_bytes(b[24..].try_into().unwrap());
        assert_eq!(*i, EngineHash::Int(low));
    }
}

#[test]
fn salt_and_lora_are_read_from_their_fields() {
    let f = fixture();
    let evs = events_of(&f, "map-int");
    let stored: Vec<&StoredBlocks> = evs
        .iter()
        .filter_map(|e| match e {
            WireEvent::BlockStored(s) => Some(s),
            _ => None,
        })
        .collect();
    let salted: Vec<_> = stored.iter().filter_map(|s| s.cache_salt()).collect();
    assert_eq!(salted, ["tenant-a"]);
    let lora: Vec<_> = stored
        .iter()
        .filter_map(|s| s.lora_name.as_deref())
        .collect();
    assert_eq!(lora, ["sql-adapter"]);
    // A continuation (parent set) never starts a salted chain.
    assert!(stored
        .iter()
        .filter(|s| s.parent_block_hash.is_some())
        .all(|s| s.cache_salt().is_none()));
    for s in &stored {
        assert_eq!(s.token_ids.len(), s.block_hashes.len() * s.block_size);
        assert_eq!(s.medium.as_deref(), Some("GPU"));
    }
}

#[test]
fn encoder_reproduces_vllms_bytes() {
    let f = fixture();
    for (variant, format) in [
        ("legacy-int", EventFormat::Array),
        ("legacy-bytes", EventFormat::Array),
        ("map-int", EventFormat::Map),
        ("map-bytes", EventFormat::Map),
    ] {
        for (seq, payload) in frames(&f, variant) {
            let batch = decode_batch(&payload).unwrap();
            assert_eq!(
                encode_batch(&batch, format),
                payload,
                "{variant} batch {seq} re-encoded differs"
            );
        }
    }
}

#[test]
fn malformed_batches_are_errors_not_panics() {
    let cases: [&[u8]; 6] = [
        b"",
        &[0xc1],                   // never-used msgpack byte
        &[0x93, 0x01],             // truncated array
        &[0x2a],                   // an integer, not a batch
        &[0x92, 0xa1, b'x', 0x90], // ts is a string
        &[
            0x93, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0x91, 0x91, 0xa3, b'B', b'a', b'd', 0x00,
        ],
    ];
    for (i, c) in cases.iter().enumerate() {
        match decode_batch(c) {
            Err(_) => {}
            Ok(b) => assert!(
                b.events.iter().all(|e| matches!(e, WireEvent::Unknown(_))),
                "case {i} decoded to {b:?}"
            ),
        }
    }
    // A stored event without token ids is a shape error naming the field.
    let mut bytes = Vec::new();
    rmp::encode::write_array_len(&mut bytes, 3).unwrap();
    rmp::encode::write_f64(&mut bytes, 1.0).unwrap();
    rmp::encode::write_array_len(&mut bytes, 1).unwrap();
    rmp::encode::write_map_len(&mut bytes, 2).unwrap();
    rmp::encode::write_str(&mut bytes, "type").unwrap();
    rmp::encode::write_str(&mut bytes, "BlockStored").unwrap();
    rmp::encode::write_str(&mut bytes, "block_hashes").unwrap();
    rmp::encode::write_array_len(&mut bytes, 1).unwrap();
    rmp::encode::write_uint(&mut bytes, 7).unwrap();
    rmp::encode::write_nil(&mut bytes).unwrap();
    let e = decode_batch(&bytes).unwrap_err();
    assert!(e.to_string().contains("token_ids"), "{e}");
    let e = decode_batch(&bytes[..bytes.len() - 3]).unwrap_err();
    assert!(matches!(e, WireError::Msgpack(_)), "{e}");
}

#[test]
fn seq_frames() {
    assert_eq!(seq_frame(258), [0, 0, 0, 0, 0, 0, 1, 2]);
    assert_eq!(parse_seq(&seq_frame(u64::MAX - 1)), Some(u64::MAX - 1));
    assert_eq!(parse_seq(&[1, 2, 3]), None);
    assert_eq!(parse_seq(&REPLAY_END_SEQ), Some(u64::MAX));
    assert_eq!("map".parse::<EventFormat>(), Ok(EventFormat::Map));
    assert!("json".parse::<EventFormat>().is_err());
}

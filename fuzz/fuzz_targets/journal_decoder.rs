//! The journal decoder on any bytes: a segment as read from disk (header, frames, resync
//! after damage, record decoding) must never panic, hang or allocate without bound, and
//! every entry it returns must lie inside the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor::journal::{Entry, Reader};

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let reader = Reader::from_bytes("fuzz.journal".into(), 1, data.to_vec());
    for entry in reader {
        match entry {
            Entry::Record { position, .. } => assert!(position.offset < len),
            Entry::Damaged(damage) => {
                assert!(damage.offset <= len && damage.offset + damage.skipped_bytes <= len);
            }
        }
    }
});

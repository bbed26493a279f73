//! Records or segments dropped, moved or edited (with their checksums made good again) break
//! the chain, and verify says where; retiring the oldest segments does not.

use std::path::Path;

use super::{TempDir, config, layout, read, records, stop, write};
use crate::journal::{
    Damage, DamageKind, Entry, Record, StopRecord, Verdict,
    format::{self, FRAME_HEAD, HEADER_LEN},
    verify,
};

/// 67-byte stop records, three to a segment: 9 records in segments 1, 2 and 3.
fn nine_in_three(dir: &Path) -> Vec<Record> {
    let mut config = config(dir);
    config.segment_size = bytesize::ByteSize::b(HEADER_LEN as u64 + 3 * 67);
    let records: Vec<Record> = (1..=9).map(stop).collect();
    write(&config, &records);
    records
}

fn segment(dir: &Path, sequence: u64) -> std::path::PathBuf {
    dir.join(format::segment_name(sequence))
}

fn chain_break(dir: &Path, sequence: u64, offset: u64, number: u64) -> Verdict {
    Verdict::Damaged(Damage {
        segment: segment(dir, sequence),
        offset,
        number,
        kind: DamageKind::Chain,
        skipped_bytes: 0,
    })
}

#[test]
fn the_layout_is_as_planned() {
    let dir = TempDir::new("tamper");
    nine_in_three(&dir.0);
    let frames: Vec<Vec<(u64, u64)>> = layout(&dir.0).into_iter().map(|(_, f)| f).collect();
    assert_eq!(
        frames,
        vec![
            vec![(72, 1), (139, 2), (206, 3)],
            vec![(72, 4), (139, 5), (206, 6)],
            vec![(72, 7), (139, 8), (206, 9)],
        ]
    );
    let Ok(Verdict::Intact(summary)) = verify(&dir.0) else {
        panic!("intact");
    };
    assert_eq!(
        Verdict::Intact(summary).line(Path::new("/j")),
        "/j: intact: 3 segments, 9 records (1 to 9), 2026-11-23T00:00:01Z to 2026-11-23T00:00:09Z"
    );
}

#[test]
fn a_record_dropped_from_the_middle_breaks_the_chain_at_the_next() {
    let dir = TempDir::new("tamper");
    let written = nine_in_three(&dir.0);
    let path = segment(&dir.0, 2);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.drain(139..206);
    std::fs::write(&path, &bytes).expect("write");
    assert_eq!(
        verify(&dir.0).expect("verify"),
        chain_break(&dir.0, 2, 139, 6)
    );
    let mut expected = written;
    expected.remove(4);
    assert_eq!(records(&read(&dir.0)), expected, "the others are all read");
}

#[test]
fn two_records_swapped_break_the_chain_at_the_first() {
    let dir = TempDir::new("tamper");
    nine_in_three(&dir.0);
    let path = segment(&dir.0, 1);
    let bytes = std::fs::read(&path).expect("read");
    let mut swapped = bytes[..139].to_vec();
    swapped.extend_from_slice(&bytes[206..273]);
    swapped.extend_from_slice(&bytes[139..206]);
    std::fs::write(&path, &swapped).expect("write");
    assert_eq!(
        verify(&dir.0).expect("verify"),
        chain_break(&dir.0, 1, 139, 3)
    );
}

#[test]
fn an_edited_record_with_good_checksums_breaks_the_chain_there() {
    let dir = TempDir::new("tamper");
    nine_in_three(&dir.0);
    let path = segment(&dir.0, 3);
    let mut bytes = std::fs::read(&path).expect("read");
    // Record 8's time, one millisecond later; both CRCs made good again.
    let payload = 139 + FRAME_HEAD;
    bytes[payload + 1] ^= 0x01;
    let crc = crc32c::crc32c(&bytes[payload..payload + 7]);
    bytes[payload + 7..payload + 11].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        Record::decode(6, &bytes[payload..payload + 7]),
        Ok(Record::Stop(StopRecord {
            at_ms: 1_795_392_008_001
        }))
    );
    std::fs::write(&path, &bytes).expect("write");
    assert_eq!(
        verify(&dir.0).expect("verify"),
        chain_break(&dir.0, 3, 139, 8)
    );
}

#[test]
fn a_segment_dropped_from_the_middle_breaks_the_chain_at_the_next_header() {
    let dir = TempDir::new("tamper");
    nine_in_three(&dir.0);
    std::fs::remove_file(segment(&dir.0, 2)).expect("rm");
    assert_eq!(
        verify(&dir.0).expect("verify"),
        chain_break(&dir.0, 3, 0, 7)
    );
    let numbers: Vec<u64> = read(&dir.0)
        .into_iter()
        .filter_map(|e| match e {
            Entry::Record { position, .. } => Some(position.number),
            Entry::Damaged(_) => None,
        })
        .collect();
    assert_eq!(numbers, vec![1, 2, 3, 7, 8, 9]);
}

#[test]
fn two_segments_swapped_break_the_chain() {
    let dir = TempDir::new("tamper");
    nine_in_three(&dir.0);
    let (two, three) = (segment(&dir.0, 2), segment(&dir.0, 3));
    let moved = dir.0.join("moved");
    std::fs::rename(&two, &moved).expect("mv");
    std::fs::rename(&three, &two).expect("mv");
    std::fs::rename(&moved, &three).expect("mv");
    // File 2 now holds segment 3, whose header says so.
    assert_eq!(
        verify(&dir.0).expect("verify"),
        chain_break(&dir.0, 2, 0, 7)
    );
}

#[test]
fn the_oldest_segments_retired_leave_an_intact_journal_that_says_so() {
    let dir = TempDir::new("tamper");
    nine_in_three(&dir.0);
    std::fs::remove_file(segment(&dir.0, 1)).expect("rm");
    let verdict = verify(&dir.0).expect("verify");
    assert_eq!(
        verdict.line(Path::new("/j")),
        "/j: intact: 2 segments, 6 records (4 to 9; older segments retired), \
         2026-11-23T00:00:04Z to 2026-11-23T00:00:09Z"
    );
    std::fs::remove_file(segment(&dir.0, 2)).expect("rm");
    assert!(matches!(verify(&dir.0), Ok(Verdict::Intact(_))));
}

#[test]
fn a_damage_line_names_segment_offset_record_and_kind() {
    let dir = TempDir::new("tamper");
    nine_in_three(&dir.0);
    let path = segment(&dir.0, 2);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[150] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write");
    assert_eq!(
        verify(&dir.0).expect("verify").line(&dir.0),
        format!(
            "{}: offset 139, record 5: checksum mismatch (67 bytes skipped)",
            path.display()
        )
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(230))
        .expect("truncate");
    std::fs::write(segment(&dir.0, 1), b"").expect("empty");
    assert_eq!(
        verify(&dir.0).expect("verify").line(&dir.0),
        format!(
            "{}: offset 0, record 1: truncated",
            segment(&dir.0, 1).display()
        )
    );
}

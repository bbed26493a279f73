//! The writer: a torn tail is cut off at open and the chain goes on; segments rotate by size
//! and age and are retired by size and age (the clock is passed in); one writer per
//! directory; modes 0700 and 0600.

use std::{os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use bytesize::ByteSize;

use super::{TempDir, at, config, read, records, stop, write};
use crate::journal::{
    DamageKind, Entry, JournalConfig, JournalError, Reader, Verdict, Writer,
    format::{self, HEADER_LEN},
    verify,
    writer::Torn,
};

fn sequences(dir: &Path) -> Vec<u64> {
    format::list_segments(dir)
        .expect("list")
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

fn numbers(dir: &Path) -> Vec<u64> {
    read(dir)
        .into_iter()
        .map(|e| match e {
            Entry::Record { position, .. } => position.number,
            Entry::Damaged(d) => panic!("damaged: {d:?}"),
        })
        .collect()
}

fn append_stops(config: &JournalConfig, seconds: &[u64]) {
    let (mut writer, _) = Writer::open(config, at(seconds[0])).expect("open");
    for s in seconds {
        writer.append(&stop(*s), at(*s)).expect("append");
    }
}

#[test]
fn a_torn_last_record_is_cut_off_at_open_and_the_chain_goes_on() {
    let dir = TempDir::new("torn");
    let config = config(&dir.0);
    write(&config, &[stop(1), stop(2), stop(3)]);
    let path = dir.0.join(format::segment_name(1));
    let mut bytes = std::fs::read(&path).expect("read");
    let whole = bytes.clone();
    // The start of a fourth frame: the agent died 30 bytes into it.
    bytes.extend_from_slice(&whole[HEADER_LEN..HEADER_LEN + 30]);
    std::fs::write(&path, &bytes).expect("write");
    assert!(matches!(
        verify(&dir.0),
        Ok(Verdict::Damaged(d)) if d.kind == DamageKind::Truncation && d.offset == 273
    ));

    let (mut writer, report) = Writer::open(&config, at(10)).expect("open");
    assert_eq!(
        report.torn,
        Some(Torn {
            segment: path.clone(),
            offset: 273,
            bytes: 30,
            kind: DamageKind::Truncation,
        })
    );
    assert_eq!((report.last_number, report.created), (3, None));
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 273);
    writer.append(&stop(11), at(11)).expect("append");
    drop(writer);
    assert_eq!(numbers(&dir.0), vec![1, 2, 3, 4]);
    assert!(matches!(verify(&dir.0), Ok(Verdict::Intact(_))));
}

#[test]
fn a_last_frame_that_never_fully_landed_is_cut_off_too_but_damage_before_it_stays() {
    let dir = TempDir::new("torn");
    let config = config(&dir.0);
    write(&config, &[stop(1), stop(2), stop(3)]);
    let path = dir.0.join(format::segment_name(1));
    let mut bytes = std::fs::read(&path).expect("read");
    // Record 1 rotted; record 3's last page never written (zeros).
    bytes[80] ^= 0x40;
    bytes[230..273].fill(0);
    std::fs::write(&path, &bytes).expect("write");
    let (mut writer, report) = Writer::open(&config, at(10)).expect("open");
    assert_eq!(
        report.torn.map(|t| (t.offset, t.bytes, t.kind)),
        Some((206, 67, DamageKind::Checksum))
    );
    assert_eq!(report.last_number, 2, "the chain goes on from record 2");
    writer.append(&stop(11), at(11)).expect("append");
    drop(writer);
    let entries = read(&dir.0);
    assert_eq!(records(&entries), vec![stop(2), stop(11)]);
    let Ok(Verdict::Damaged(d)) = verify(&dir.0) else {
        panic!("record 1 is still damaged");
    };
    assert_eq!((d.offset, d.number, d.kind), (72, 1, DamageKind::Checksum));
}

#[test]
fn a_segment_whose_header_never_landed_is_removed_at_open() {
    let dir = TempDir::new("torn");
    let config = config(&dir.0);
    write(&config, &[stop(1), stop(2)]);
    let torn = dir.0.join(format::segment_name(2));
    std::fs::write(&torn, [0xAB; 40]).expect("write");
    let (mut writer, report) = Writer::open(&config, at(10)).expect("open");
    assert_eq!(
        report.torn,
        Some(Torn {
            segment: torn.clone(),
            offset: 0,
            bytes: 40,
            kind: DamageKind::Truncation,
        })
    );
    assert!(!torn.exists());
    writer.append(&stop(11), at(11)).expect("append");
    drop(writer);
    assert_eq!(
        (sequences(&dir.0), numbers(&dir.0)),
        (vec![1], vec![1, 2, 3])
    );
}

#[test]
fn a_reopened_journal_appends_to_its_last_segment() {
    let dir = TempDir::new("reopen");
    let config = config(&dir.0);
    let (mut writer, report) = Writer::open(&config, at(0)).expect("open");
    assert_eq!(
        (report.segments, report.last_number, report.created),
        (1, 0, Some(dir.0.join(format::segment_name(1))))
    );
    writer.append(&stop(1), at(1)).expect("append");
    drop(writer);
    let (mut writer, report) = Writer::open(&config, at(2)).expect("reopen");
    assert_eq!(
        (
            report.segments,
            report.last_number,
            report.created,
            report.torn
        ),
        (1, 1, None, None)
    );
    writer.append(&stop(3), at(3)).expect("append");
    assert_eq!(writer.bytes(), 72 + 67 + 67);
    drop(writer);
    assert_eq!((sequences(&dir.0), numbers(&dir.0)), (vec![1], vec![1, 2]));
    assert_eq!(
        verify(&dir.0).expect("verify").line(Path::new("/j")),
        "/j: intact: 1 segment, 2 records (1 to 2), 2026-11-23T00:00:01Z to 2026-11-23T00:00:03Z"
    );
}

#[test]
fn segments_rotate_by_size_and_by_age() {
    let dir = TempDir::new("rotate");
    let mut config = config(&dir.0);
    config.segment_size = ByteSize::b(HEADER_LEN as u64 + 2 * 67);
    config.segment_age = Duration::from_secs(60);
    let (mut writer, _) = Writer::open(&config, at(0)).expect("open");
    let mut rotations = Vec::new();
    for s in [0, 1, 2, 70, 200] {
        let appended = writer.append(&stop(s), at(s)).expect("append");
        if let Some(r) = appended.rotated {
            rotations.push((s, r.closed, r.opened));
        }
    }
    let name = |n| dir.0.join(format::segment_name(n));
    assert_eq!(
        rotations,
        vec![
            (2, name(1), name(2)),   // two records fill segment 1
            (70, name(2), name(3)),  // segment 2 (created at 2) is 68 s old
            (200, name(3), name(4)), // segment 3, 130 s old
        ]
    );
    drop(writer);
    let frames: Vec<usize> = super::layout(&dir.0).iter().map(|(_, f)| f.len()).collect();
    assert_eq!(frames, vec![2, 1, 1, 1]);
    assert_eq!(numbers(&dir.0), vec![1, 2, 3, 4, 5]);
}

#[test]
fn the_oldest_segments_are_retired_by_size() {
    let dir = TempDir::new("retire");
    let mut config = config(&dir.0);
    config.segment_size = ByteSize::b(HEADER_LEN as u64 + 67);
    // Room for three one-record segments.
    config.retain_size = ByteSize::b(3 * (HEADER_LEN as u64 + 67));
    let (mut writer, _) = Writer::open(&config, at(0)).expect("open");
    let mut retired = Vec::new();
    for s in 1..=6 {
        let appended = writer.append(&stop(s), at(s)).expect("append");
        retired.extend(appended.rotated.into_iter().flat_map(|r| r.retired));
    }
    assert_eq!(
        retired,
        vec![
            dir.0.join(format::segment_name(1)),
            dir.0.join(format::segment_name(2)),
            dir.0.join(format::segment_name(3)),
        ]
    );
    assert_eq!(writer.bytes(), 3 * 139);
    drop(writer);
    assert_eq!(sequences(&dir.0), vec![4, 5, 6]);
    assert_eq!(
        verify(&dir.0).expect("verify").line(Path::new("/j")),
        "/j: intact: 3 segments, 3 records (4 to 6; older segments retired), \
         2026-11-23T00:00:04Z to 2026-11-23T00:00:06Z"
    );
}

#[test]
fn the_oldest_segments_are_retired_by_age() {
    let dir = TempDir::new("retire");
    let mut config = config(&dir.0);
    config.segment_age = Duration::from_secs(100);
    config.retain_age = Duration::from_secs(150);
    append_stops(&config, &[0, 100, 200]);
    assert_eq!(
        sequences(&dir.0),
        vec![1, 2, 3],
        "segment 1 ended 100 s ago"
    );
    append_stops(&config, &[300]);
    assert_eq!(
        sequences(&dir.0),
        vec![2, 3, 4],
        "segment 1's records are 200 s old: retired; segment 2's last is 100 s old"
    );
    assert_eq!(numbers(&dir.0), vec![2, 3, 4]);
}

#[test]
fn one_writer_per_directory_with_private_modes() {
    let dir = TempDir::new("lock");
    let config = config(&dir.0.join("journal"));
    let (_writer, _) = Writer::open(&config, at(0)).expect("open");
    let Err(e) = Writer::open(&config, at(0)) else {
        panic!("a second writer");
    };
    assert!(matches!(e, JournalError::Locked { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "journal {}: in use by another process (its lock is held)",
            config.dir.display()
        )
    );
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&config.dir), 0o700);
    assert_eq!(mode(&config.dir.join(format::segment_name(1))), 0o600);
}

#[test]
fn reading_from_a_time_skips_the_segments_before_it() {
    let dir = TempDir::new("from");
    let mut config = config(&dir.0);
    config.segment_age = Duration::from_secs(100);
    append_stops(&config, &[0, 100, 200, 300]);
    let from = |s: u64| -> Vec<u64> {
        Reader::open_from(&dir.0, crate::flow::interval::unix_ms(at(s)))
            .expect("reader")
            .map(|e| match e {
                Entry::Record { position, .. } => position.number,
                Entry::Damaged(d) => panic!("{d:?}"),
            })
            .collect()
    };
    assert_eq!(from(0), vec![1, 2, 3, 4]);
    assert_eq!(from(150), vec![2, 3, 4]);
    assert_eq!(from(300), vec![4]);
    assert_eq!(from(1_000), vec![4]);
}

#[test]
fn an_empty_directory_is_no_journal() {
    let dir = TempDir::new("empty");
    std::fs::create_dir_all(&dir.0).expect("mkdir");
    let Err(e) = verify(&dir.0) else {
        panic!("no segments");
    };
    assert_eq!(
        e.to_string(),
        format!(
            "journal {}: no segment files (NNNNNNNNNNNNNNNN.journal)",
            dir.0.display()
        )
    );
}

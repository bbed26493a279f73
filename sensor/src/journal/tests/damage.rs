//! Any flipped byte and any truncation is found by verify and located exactly (segment,
//! offset of the damaged frame, record number, kind), and reading goes on after it: every
//! intact record before and after the damage comes back.

use std::path::PathBuf;

use proptest::prelude::*;

use super::{TempDir, config, layout, read, records, write};
use crate::journal::{
    Damage, DamageKind, Entry, Record, Verdict, format::HEADER_LEN, tests::records::record, verify,
};

/// A segment's path, length and frames (offset, number).
type Segment = (PathBuf, u64, Vec<(u64, u64)>);

/// A journal of `records` in segments of at most `segment_size` bytes, and its layout.
struct Written {
    _dir: TempDir,
    dir: PathBuf,
    records: Vec<Record>,
    segments: Vec<Segment>,
}

fn written(records: Vec<Record>, segment_size: u64) -> Written {
    let dir = TempDir::new("damage");
    let mut config = config(&dir.0);
    config.segment_size = bytesize::ByteSize::b(segment_size);
    write(&config, &records);
    let segments = layout(&dir.0)
        .into_iter()
        .map(|(path, frames)| {
            let len = std::fs::metadata(&path).expect("stat").len();
            (path, len, frames)
        })
        .collect();
    Written {
        dir: dir.0.clone(),
        _dir: dir,
        records,
        segments,
    }
}

impl Written {
    /// The number of the first record in segment `s` (or the one after the last before it).
    fn first_number(&self, s: usize) -> u64 {
        let before: usize = self.segments[..s].iter().map(|(_, _, f)| f.len()).sum();
        before as u64 + 1
    }

    /// The frame of segment `s` holding byte `at`: (offset, number, end).
    fn frame_at(&self, s: usize, at: u64) -> Option<(u64, u64, u64)> {
        let (_, len, frames) = &self.segments[s];
        frames
            .iter()
            .enumerate()
            .find_map(|(i, &(offset, number))| {
                let end = frames.get(i + 1).map_or(*len, |f| f.0);
                (offset..end).contains(&at).then_some((offset, number, end))
            })
    }

    /// The records without those numbered in `lost`.
    fn records_but(&self, lost: impl Fn(u64) -> bool) -> Vec<Record> {
        self.records
            .iter()
            .enumerate()
            .filter(|(i, _)| !lost(*i as u64 + 1))
            .map(|(_, r)| r.clone())
            .collect()
    }

    fn damaged(
        &self,
        s: usize,
        offset: u64,
        number: u64,
        kind: DamageKind,
        skipped: u64,
    ) -> Damage {
        Damage {
            segment: self.segments[s].0.clone(),
            offset,
            number,
            kind,
            skipped_bytes: skipped,
        }
    }
}

fn damages(entries: &[Entry]) -> Vec<Damage> {
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::Damaged(d) => Some(d.clone()),
            Entry::Record { .. } => None,
        })
        .collect()
}

/// Records and segment sizes that make journals of a few segments.
fn journal() -> impl Strategy<Value = (Vec<Record>, u64)> {
    (prop::collection::vec(record(), 1..16), 256u64..4_096)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_flipped_byte_is_located_exactly_and_every_other_record_is_read(
        (records_in, segment_size) in journal(),
        pick in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let w = written(records_in, segment_size);
        let total: u64 = w.segments.iter().map(|(_, len, _)| len).sum();
        let mut at = pick.index(total as usize) as u64;
        let s = w.segments.iter().position(|(_, len, _)| {
            let here = at < *len;
            if !here {
                at -= len;
            }
            here
        }).expect("a segment holds the byte");
        let path = &w.segments[s].0;
        let mut bytes = std::fs::read(path).expect("read");
        bytes[at as usize] ^= flip;
        std::fs::write(path, &bytes).expect("write");

        let (expected, lost) = if at < HEADER_LEN as u64 {
            (w.damaged(s, 0, w.first_number(s), DamageKind::Header, HEADER_LEN as u64), None)
        } else {
            let (offset, number, end) = w.frame_at(s, at).expect("a frame holds the byte");
            // A damaged head is skipped up to the next frame's marker: the same bytes.
            (w.damaged(s, offset, number, DamageKind::Checksum, end - offset), Some(number))
        };
        prop_assert_eq!(
            verify(&w.dir).expect("verify"),
            Verdict::Damaged(expected.clone())
        );
        let entries = read(&w.dir);
        prop_assert_eq!(damages(&entries), vec![expected]);
        prop_assert_eq!(records(&entries), w.records_but(|n| Some(n) == lost));
    }

    #[test]
    fn any_truncation_is_located_exactly_and_every_record_before_it_is_read(
        (records_in, segment_size) in journal(),
        pick_segment in any::<prop::sample::Index>(),
        pick_length in any::<prop::sample::Index>(),
    ) {
        let w = written(records_in, segment_size);
        let s = pick_segment.index(w.segments.len());
        let (path, len, frames) = &w.segments[s];
        let cut = pick_length.index(*len as usize) as u64;
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(cut))
            .expect("truncate");
        let last = s + 1 == w.segments.len();
        let at_boundary = cut == HEADER_LEN as u64 || frames.iter().any(|f| f.0 == cut);
        // Records of segment s from the cut on are gone.
        let first_lost = match w.frame_at(s, cut) {
            Some((_, number, _)) if cut >= HEADER_LEN as u64 => number,
            _ if cut < HEADER_LEN as u64 => w.first_number(s),
            _ => w.first_number(s + 1),
        };
        let kept_in_s = first_lost..w.first_number(s + 1);
        let expected = if cut < HEADER_LEN as u64 {
            Some(w.damaged(s, 0, w.first_number(s), DamageKind::Truncation, cut))
        } else if at_boundary && last {
            // A journal cut between records reads as a shorter journal.
            None
        } else if at_boundary {
            // The next segment's header names a predecessor that no longer ends so.
            Some(w.damaged(s + 1, 0, w.first_number(s + 1), DamageKind::Chain, 0))
        } else {
            let (offset, number, _) = w.frame_at(s, cut).expect("a frame holds the cut");
            Some(w.damaged(s, offset, number, DamageKind::Truncation, cut - offset))
        };
        let entries = read(&w.dir);
        prop_assert_eq!(damages(&entries), expected.clone().into_iter().collect::<Vec<_>>());
        prop_assert_eq!(records(&entries), w.records_but(|n| kept_in_s.contains(&n)));
        let verdict = verify(&w.dir).expect("verify");
        match expected {
            Some(damage) => prop_assert_eq!(verdict, Verdict::Damaged(damage)),
            None => prop_assert!(matches!(verdict, Verdict::Intact(_)), "{:?}", verdict),
        }
    }
}

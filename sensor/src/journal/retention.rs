//! Which of the oldest segments to retire: pure arithmetic over the segments' sizes and
//! creation times, with the clock passed in.

use std::path::PathBuf;

/// A segment the writer knows of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SegmentInfo {
    pub sequence: u64,
    pub path: PathBuf,
    /// From its header (its file's modification time when the header is damaged).
    pub created_ms: u64,
    pub size: u64,
}

/// How many of the oldest `segments` to delete. The newest (the one written to) always
/// stays. By age, a segment goes once the segment after it was created `retain_age_ms`
/// ago: every record it holds was written before that. By size, the oldest go while the
/// total is above `retain_size`.
pub(super) fn to_retire(
    segments: &[SegmentInfo],
    retain_size: u64,
    retain_age_ms: u64,
    now_ms: u64,
) -> usize {
    let mut total: u64 = segments.iter().map(|s| s.size).sum();
    let mut retire = 0;
    while retire + 1 < segments.len() {
        let too_old = segments[retire + 1]
            .created_ms
            .saturating_add(retain_age_ms)
            <= now_ms;
        if !(too_old || total > retain_size) {
            break;
        }
        total -= segments[retire].size;
        retire += 1;
    }
    retire
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(sequence: u64, created_ms: u64, size: u64) -> SegmentInfo {
        SegmentInfo {
            sequence,
            path: PathBuf::from(format!("{sequence}")),
            created_ms,
            size,
        }
    }

    #[test]
    fn the_oldest_go_by_size_and_by_age_and_the_newest_stays() {
        let segments = [segment(1, 0, 100), segment(2, 10, 100), segment(3, 20, 100)];
        assert_eq!(to_retire(&segments, 300, 1_000, 25), 0, "within both");
        assert_eq!(to_retire(&segments, 299, 1_000, 25), 1, "one over the size");
        assert_eq!(
            to_retire(&segments, 100, 1_000, 25),
            2,
            "down to the newest"
        );
        assert_eq!(to_retire(&segments, 0, 1_000, 25), 2, "the newest stays");
        assert_eq!(
            to_retire(&segments, 1_000, 15, 24),
            0,
            "segment 1's records end at 10: 14 ms old"
        );
        assert_eq!(to_retire(&segments, 1_000, 15, 25), 1, "15 ms old: retired");
        assert_eq!(to_retire(&segments, 1_000, 15, 35), 2);
        assert_eq!(to_retire(&segments, 1_000, 15, 1_000_000), 2);
    }
}

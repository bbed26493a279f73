//! Records the journal could not take yet: kept in memory, in order, up to a bound, and
//! written first once writing works again, so that a disk that fills for a while costs no
//! record. Beyond the bound the newest are dropped (and counted by the caller): the journal
//! keeps an unbroken run from where it stopped, and picks up again after the gap.

use std::collections::VecDeque;

use super::record::Record;

pub struct Backlog {
    records: VecDeque<(Record, usize)>,
    bytes: usize,
    limit: usize,
}

/// What a flush did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Records written, oldest first.
    pub written: usize,
    /// A record could not be written; it stays first.
    pub stopped: bool,
}

impl Backlog {
    /// A backlog of at most `limit` bytes of records (as the caller sizes them).
    pub fn new(limit: usize) -> Self {
        Self {
            records: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Queues `record` (about `size` bytes); `false` when it does not fit: dropped.
    pub fn push(&mut self, record: Record, size: usize) -> bool {
        if self.bytes + size > self.limit && !self.records.is_empty() {
            return false;
        }
        self.bytes += size;
        self.records.push_back((record, size));
        true
    }

    /// Writes the records, oldest first, with `write` (`true`: written), until one is not;
    /// it stays first, for the next flush.
    pub fn flush(&mut self, mut write: impl FnMut(&Record) -> bool) -> Flushed {
        let mut flushed = Flushed::default();
        while let Some((record, size)) = self.records.front() {
            if !write(record) {
                flushed.stopped = true;
                break;
            }
            self.bytes -= *size;
            self.records.pop_front();
            flushed.written += 1;
        }
        flushed
    }

    /// Empties it; how many records were in it.
    pub fn clear(&mut self) -> usize {
        let count = self.records.len();
        self.records.clear();
        self.bytes = 0;
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::StopRecord;

    fn stop(at_ms: u64) -> Record {
        Record::Stop(StopRecord { at_ms })
    }

    /// A writer that fails while the disk is "full", and keeps what it wrote.
    struct Disk {
        full: bool,
        written: Vec<Record>,
    }

    impl Disk {
        fn write(&mut self, record: &Record) -> bool {
            if self.full {
                return false;
            }
            self.written.push(record.clone());
            true
        }
    }

    #[test]
    fn records_wait_while_the_disk_is_full_and_are_written_in_order_after() {
        let mut disk = Disk {
            full: true,
            written: Vec::new(),
        };
        let mut backlog = Backlog::new(1_000);
        for at in 1..=3 {
            assert!(backlog.push(stop(at), 100));
            let flushed = backlog.flush(|r| disk.write(r));
            assert_eq!(
                flushed,
                Flushed {
                    written: 0,
                    stopped: true
                }
            );
        }
        assert_eq!(backlog.len(), 3);
        disk.full = false;
        assert!(backlog.push(stop(4), 100));
        let flushed = backlog.flush(|r| disk.write(r));
        assert_eq!(
            flushed,
            Flushed {
                written: 4,
                stopped: false
            }
        );
        assert!(backlog.is_empty());
        assert_eq!(disk.written, vec![stop(1), stop(2), stop(3), stop(4)]);
    }

    #[test]
    fn beyond_its_bound_the_newest_are_refused_and_the_space_comes_back_when_written() {
        let mut backlog = Backlog::new(250);
        assert!(backlog.push(stop(1), 100));
        assert!(backlog.push(stop(2), 100));
        assert!(!backlog.push(stop(3), 100), "over 250 bytes");
        assert_eq!(backlog.len(), 2);
        let mut written = Vec::new();
        let flushed = backlog.flush(|r| {
            written.push(r.clone());
            true
        });
        assert_eq!(flushed.written, 2);
        assert_eq!(written, vec![stop(1), stop(2)]);
        assert!(backlog.push(stop(4), 100), "room again");
        // One record larger than the bound still goes in an empty backlog: never stuck.
        let mut big = Backlog::new(10);
        assert!(big.push(stop(5), 100));
        assert_eq!(big.clear(), 1);
        assert!(big.is_empty());
    }

    #[test]
    fn a_flush_stops_at_the_first_failure_and_keeps_it_first() {
        let mut backlog = Backlog::new(1_000);
        for at in 1..=3 {
            backlog.push(stop(at), 10);
        }
        let mut calls = 0;
        let flushed = backlog.flush(|_| {
            calls += 1;
            calls != 2
        });
        assert_eq!(flushed.written, 1);
        assert_eq!(backlog.len(), 2);
        let mut rest = Vec::new();
        backlog.flush(|r| {
            rest.push(r.clone());
            true
        });
        assert_eq!(rest, vec![stop(2), stop(3)]);
    }
}

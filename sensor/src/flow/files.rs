//! The file table: the kernel's per-(process, file) read and write totals as rows with the
//! process named, the path and its class, per-interval deltas, in bounded memory (the same
//! rules as the flow table: idle rows make room, else bytes go to the service's other row).
//! Reads and writes of one (process, file) share a row, keyed by the same (device, inode),
//! so that detection can follow a file from its writer to its readers.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::SystemTime,
};

use sensor_common::{FileKey, FileRead, FileWrite};

use super::{
    class::{FileClasses, OTHER_FILE_CLASS},
    flows::{Evictions, Limits, largest_first, oldest},
    identity::{Names, Process, ProcessSource},
    interval::FileInterval,
    path_hash::PathHasher,
    paths::{Mounts, WalkedPath, path_of},
};
use crate::api::{FileRecord, Filter};

/// Bytes and calls, read and written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    bytes_read: u64,
    reads: u64,
    bytes_written: u64,
    writes: u64,
}

/// Which of a row's two kernel maps a total came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Read,
    Write,
}

impl Counts {
    /// What moved since `before`, each side on its own: a side whose totals went down was
    /// counted anew (its kernel key was deleted and made again), so all of it is new, and the
    /// other side is untouched.
    fn since(self, before: Self) -> Self {
        let side = |now: (u64, u64), then: (u64, u64)| {
            if now.0 < then.0 || now.1 < then.1 {
                now
            } else {
                (now.0 - then.0, now.1 - then.1)
            }
        };
        let (bytes_read, reads) = side(
            (self.bytes_read, self.reads),
            (before.bytes_read, before.reads),
        );
        let (bytes_written, writes) = side(
            (self.bytes_written, self.writes),
            (before.bytes_written, before.writes),
        );
        Self {
            bytes_read,
            reads,
            bytes_written,
            writes,
        }
    }

    /// These totals with one side replaced by the kernel's `bytes` and `calls`.
    fn with(self, side: Side, bytes: u64, calls: u64) -> Self {
        match side {
            Side::Read => Self {
                bytes_read: bytes,
                reads: calls,
                ..self
            },
            Side::Write => Self {
                bytes_written: bytes,
                writes: calls,
                ..self
            },
        }
    }

    fn add(&mut self, other: Self) {
        self.bytes_read += other.bytes_read;
        self.reads += other.reads;
        self.bytes_written += other.bytes_written;
        self.writes += other.writes;
    }

    fn is_zero(self) -> bool {
        self == Self::default()
    }

    /// The size rows are ranked by: bytes moved either way.
    fn bytes(self) -> u64 {
        self.bytes_read.saturating_add(self.bytes_written)
    }
}

/// One poll's running totals from the kernel's file maps.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileSums<'a> {
    pub reads: &'a [(FileKey, FileRead)],
    /// Per process, bytes read while the read map was full.
    pub read_overflow: &'a [(u32, u64)],
    pub writes: &'a [(FileKey, FileWrite)],
    /// Per process, bytes written while the write map was full.
    pub write_overflow: &'a [(u32, u64)],
}

impl FileSums<'_> {
    /// Every total as (key, side, bytes, calls); overflow under its process's overflow key,
    /// with no calls.
    fn totals(&self) -> impl Iterator<Item = (FileKey, Side, u64, u64)> + '_ {
        let reads = self
            .reads
            .iter()
            .map(|(key, r)| (*key, Side::Read, r.bytes, r.reads));
        let read_overflow = self
            .read_overflow
            .iter()
            .map(|(tgid, bytes)| (overflow_key(*tgid), Side::Read, *bytes, 0));
        let writes = self
            .writes
            .iter()
            .map(|(key, w)| (*key, Side::Write, w.bytes, w.writes));
        let write_overflow = self
            .write_overflow
            .iter()
            .map(|(tgid, bytes)| (overflow_key(*tgid), Side::Write, *bytes, 0));
        reads
            .chain(read_overflow)
            .chain(writes)
            .chain(write_overflow)
    }
}

struct Row {
    process: Arc<Process>,
    path: Option<Arc<str>>,
    class: Arc<str>,
    totals: Counts,
    interval: Counts,
    last_seen: SystemTime,
}

/// One row's change in one poll, for the metrics.
pub struct FileChange {
    pub process: Arc<Process>,
    pub class: Arc<str>,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// A file's path as shown, and the class of its real path.
struct Named {
    path: Arc<str>,
    class: Arc<str>,
}

pub struct FileTable {
    limits: Limits,
    classes: FileClasses,
    /// Interned class names, so rows and changes share them.
    class_names: HashMap<String, Arc<str>>,
    /// Per kernel key: its last totals (both sides), and whether its bytes go to the other
    /// row.
    seen: HashMap<FileKey, (Counts, bool)>,
    rows: HashMap<FileKey, Row>,
    other: HashMap<String, Row>,
    /// Per service: bytes read since start.
    services: HashMap<String, u64>,
    names: Names,
    /// (device, inode) → path as shown (hashed with `files.hash_paths`) and the class of
    /// the real one, as the kernel's walks told; at most twice `max_rows`.
    paths: HashMap<(u32, u64), Named>,
    /// Shows each path as its keyed hash (`files.hash_paths`).
    hasher: Option<PathHasher>,
    /// (device, inode) → the rows of it made before its path came (a path the full ring
    /// dropped comes at the file's next read or write, perhaps in another process): the path
    /// is given to them when it comes, not only when each row next moves, so that an interval
    /// record and lineage see the class. Keys of rows since evicted or named are pruned when
    /// it outgrows the table.
    pathless: HashMap<(u32, u64), Vec<FileKey>>,
    pub evictions: Evictions,
}

/// The key of a process's row of reads and writes that found no room in the kernel's file
/// maps.
fn overflow_key(tgid: u32) -> FileKey {
    FileKey {
        tgid,
        dev: 0,
        ino: 0,
    }
}

impl FileTable {
    pub fn new(limits: Limits, classes: FileClasses) -> Self {
        let class_names = classes
            .names()
            .map(|name| (name.to_owned(), Arc::from(name)))
            .collect();
        Self {
            limits,
            classes,
            class_names,
            seen: HashMap::new(),
            rows: HashMap::new(),
            other: HashMap::new(),
            services: HashMap::new(),
            names: Names::default(),
            paths: HashMap::new(),
            hasher: None,
            pathless: HashMap::new(),
            evictions: Evictions::default(),
        }
    }

    /// Shows every path learnt from now on as its keyed hash; classes still come from the
    /// real paths.
    pub fn hash_paths(&mut self, hasher: PathHasher) {
        self.hasher = Some(hasher);
    }

    /// New file classes (a config reload), for paths the kernel reports from now on: a path
    /// already learnt keeps its class (with `files.hash_paths`, its real name is not kept).
    pub fn set_classes(&mut self, classes: FileClasses) {
        for name in classes.names() {
            if !self.class_names.contains_key(name) {
                self.class_names.insert(name.to_owned(), Arc::from(name));
            }
        }
        self.classes = classes;
    }

    /// The path (as shown) and class of a file, `other` while its path is not known.
    fn named(&self, key: &FileKey) -> (Option<Arc<str>>, Arc<str>) {
        match self.paths.get(&(key.dev, key.ino)) {
            Some(named) => (Some(Arc::clone(&named.path)), Arc::clone(&named.class)),
            None => (None, self.class_of(None)),
        }
    }

    /// Takes the paths the kernel sent since the last poll, and names the rows that were
    /// waiting for them.
    pub fn learn_paths(&mut self, walked: &[WalkedPath], mounts: &Mounts) {
        for walked in walked {
            let id = (walked.dev, walked.ino);
            let real = path_of(walked, mounts);
            let class = self.class_of(Some(&real));
            let path: Arc<str> = match &self.hasher {
                Some(hasher) => Arc::from(hasher.hash(&real)),
                None => Arc::from(real),
            };
            if let Some(keys) = self.pathless.remove(&id) {
                for key in keys {
                    if let Some(row) = self.rows.get_mut(&key)
                        && row.path.is_none()
                    {
                        row.class = Arc::clone(&class);
                        row.path = Some(Arc::clone(&path));
                    }
                }
            }
            self.paths.insert(id, Named { path, class });
        }
        if self.paths.len() > self.limits.max_rows.saturating_mul(2) {
            // Keep the paths of files a row still names; the kernel sends a path again when
            // its own record of having sent it ages out.
            let named: HashSet<(u32, u64)> = self.rows.keys().map(|k| (k.dev, k.ino)).collect();
            self.paths.retain(|id, _| named.contains(id));
        }
    }

    fn class_of(&self, path: Option<&str>) -> Arc<str> {
        let name = self.classes.classify(path);
        self.class_names
            .get(name)
            .cloned()
            .unwrap_or_else(|| Arc::from(OTHER_FILE_CLASS))
    }

    /// Takes one poll's running totals and returns what changed.
    pub fn apply(
        &mut self,
        now: SystemTime,
        sums: FileSums<'_>,
        source: &dyn ProcessSource,
    ) -> Vec<FileChange> {
        let mut changes = Vec::new();
        for (key, side, bytes, calls) in sums.totals() {
            let (before, to_other) = self.seen.get(&key).copied().unwrap_or_default();
            let totals = before.with(side, bytes, calls);
            let delta = totals.since(before);
            if delta.is_zero() {
                continue;
            }
            let process = self.names.get(key.tgid, source);
            let own = !to_other
                && (self.rows.contains_key(&key)
                    || self.rows.len() < self.limits.max_rows
                    || self.make_room());
            self.seen.insert(key, (totals, !own));
            let class = if own {
                if !self.rows.contains_key(&key) {
                    let (path, class) = self.named(&key);
                    if path.is_none() {
                        self.wait_for_path(key);
                    }
                    self.rows.insert(key, Row::new(&process, path, class, now));
                }
                let Some(row) = self.rows.get_mut(&key) else {
                    continue;
                };
                row.totals = totals;
                row.interval.add(delta);
                row.last_seen = now;
                Arc::clone(&row.class)
            } else {
                let service = &process.service;
                if !self.other.contains_key(service) {
                    let class = self.class_of(None);
                    let row = Row::new(&Arc::new(Process::other(service)), None, class, now);
                    self.other.insert(service.clone(), row);
                }
                let Some(row) = self.other.get_mut(service) else {
                    continue;
                };
                row.totals.add(delta);
                row.interval.add(delta);
                row.last_seen = now;
                Arc::clone(&row.class)
            };
            // get_mut first: the service's name is copied once, not on every delta.
            match self.services.get_mut(&process.service) {
                Some(total) => *total += delta.bytes_read,
                None => {
                    self.services
                        .insert(process.service.clone(), delta.bytes_read);
                }
            }
            changes.push(FileChange {
                process,
                class,
                bytes_read: delta.bytes_read,
                bytes_written: delta.bytes_written,
            });
        }
        changes
    }

    /// Notes a row made without its path, for [`Self::learn_paths`] to name. The overflow
    /// rows (device and inode 0) have none to wait for.
    fn wait_for_path(&mut self, key: FileKey) {
        if key == overflow_key(key.tgid) {
            return;
        }
        // Twice the table: a pruning leaves at most one entry per row, so it runs once per
        // `max_rows` new entries at most.
        if self.pathless.len() >= self.limits.max_rows.saturating_mul(2) {
            let rows = &self.rows;
            self.pathless.retain(|_, keys| {
                keys.retain(|k| rows.get(k).is_some_and(|row| row.path.is_none()));
                !keys.is_empty()
            });
        }
        self.pathless
            .entry((key.dev, key.ino))
            .or_default()
            .push(key);
    }

    /// Evicts the least recently active idle rows, an eighth of the table per call; false
    /// when no row is idle.
    fn make_room(&mut self) -> bool {
        let idle: Vec<(SystemTime, FileKey)> = self
            .rows
            .iter()
            .filter(|(_, row)| row.interval.is_zero())
            .map(|(key, row)| (row.last_seen, *key))
            .collect();
        let evicted = oldest(idle, self.limits.max_rows / 8);
        for key in &evicted {
            self.rows.remove(key);
        }
        self.evictions.full += evicted.len() as u64;
        !evicted.is_empty()
    }

    /// The first poll of maps an earlier agent left pinned: totals, not news.
    pub fn adopt(&mut self, now: SystemTime, sums: FileSums<'_>, source: &dyn ProcessSource) {
        for (key, side, bytes, calls) in sums.totals() {
            let (before, _) = self.seen.get(&key).copied().unwrap_or_default();
            let totals = before.with(side, bytes, calls);
            self.seen.insert(key, (totals, false));
            let is_file = key != overflow_key(key.tgid);
            if let Some(row) = self.rows.get_mut(&key) {
                row.totals = totals;
            } else if is_file && self.rows.len() < self.limits.max_rows {
                let process = self.names.get(key.tgid, source);
                let (path, class) = self.named(&key);
                if path.is_none() {
                    self.wait_for_path(key);
                }
                let mut row = Row::new(&process, path, class, now);
                row.totals = totals;
                self.rows.insert(key, row);
            }
        }
    }

    /// Ends an interval: each row's reads and writes since the last call; drops rows idle for
    /// the TTL.
    pub fn tick(&mut self, now: SystemTime) -> Vec<FileInterval> {
        let mut records: Vec<FileInterval> = self
            .rows
            .iter_mut()
            .map(|(key, row)| (Some(key), row))
            .chain(self.other.values_mut().map(|row| (None, row)))
            .filter(|(_, row)| !row.interval.is_zero())
            .map(|(key, row)| {
                let record = FileInterval {
                    service: row.process.service.clone(),
                    pid: key.map_or(0, |k| k.tgid),
                    comm: row.process.comm.clone(),
                    path: row.path.as_deref().map(str::to_owned),
                    class: row.class.to_string(),
                    device: key.map_or(0, |k| u64::from(k.dev)),
                    inode: key.map_or(0, |k| k.ino),
                    bytes_read: row.interval.bytes_read,
                    reads: row.interval.reads,
                    bytes_written: row.interval.bytes_written,
                    writes: row.interval.writes,
                };
                row.interval = Counts::default();
                record
            })
            .collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.bytes_read.saturating_add(r.bytes_written)));
        let ttl = self.limits.idle_ttl;
        let idle = |row: &Row| now.duration_since(row.last_seen).unwrap_or_default() >= ttl;
        let before = self.rows.len() + self.other.len();
        self.rows.retain(|_, row| !idle(row));
        self.other.retain(|_, row| !idle(row));
        self.evictions.idle += (before - self.rows.len() - self.other.len()) as u64;
        self.names.prune();
        records
    }

    /// Forgets the kernel keys of processes that exited (the poll thread deletes them from
    /// the kernel's maps after this poll): a reused pid's key counts from zero. Their rows stay
    /// until idle.
    pub fn forget_processes(&mut self, exited: &HashSet<u32>) {
        self.seen.retain(|key, _| !exited.contains(&key.tgid));
    }

    /// The process exec'd or its pid was forked anew: its new rows read it afresh
    /// (`Names::renew`).
    pub fn renew(&mut self, pid: u32) {
        self.names.renew(pid);
    }

    /// The process a row of this pid names.
    pub fn process(&self, pid: u32) -> Option<&Arc<Process>> {
        self.names.peek(pid)
    }

    pub fn len(&self) -> usize {
        self.rows.len() + self.other.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn service_totals(&self) -> &HashMap<String, u64> {
        &self.services
    }

    /// The API view, the rows that moved the most bytes (read plus written) first, filtered
    /// by service and file class.
    pub fn records(&self, filter: &Filter) -> Vec<FileRecord> {
        let mut rows: Vec<(Option<&FileKey>, &Row)> = self
            .rows
            .iter()
            .map(|(key, row)| (Some(key), row))
            .chain(self.other.values().map(|row| (None, row)))
            .filter(|(_, row)| filter.keeps(&row.process.service, &row.class))
            .collect();
        largest_first(&mut rows, filter.limit, |(key, row)| {
            (row.totals.bytes(), key.map(|k| k.tgid))
        });
        rows.into_iter()
            .map(|(key, row)| {
                let device = match key {
                    Some(k) if k.ino != 0 || k.dev != 0 => {
                        format!("{}:{}", k.dev >> 20, k.dev & 0xf_ffff)
                    }
                    _ => "other".to_owned(),
                };
                FileRecord {
                    pid: key.map_or(0, |k| k.tgid),
                    comm: row.process.comm.clone(),
                    exe: row.process.exe.clone(),
                    service: row.process.service.clone(),
                    path: row.path.as_deref().map(str::to_owned),
                    class: row.class.to_string(),
                    device,
                    inode: key.map_or(0, |k| k.ino),
                    bytes_read: row.totals.bytes_read,
                    reads: row.totals.reads,
                    bytes_written: row.totals.bytes_written,
                    writes: row.totals.writes,
                }
            })
            .collect()
    }
}

impl Row {
    fn new(
        process: &Arc<Process>,
        path: Option<Arc<str>>,
        class: Arc<str>,
        now: SystemTime,
    ) -> Self {
        Self {
            process: Arc::clone(process),
            path,
            class,
            totals: Counts::default(),
            interval: Counts::default(),
            last_seen: now,
        }
    }
}

#[cfg(test)]
mod tests;

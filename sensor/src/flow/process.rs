//! Processes named from the kernel's exec, fork and exit events, for the ones that are gone
//! before the agent looks at /proc: an intruder's `curl` that uploads and exits in 50 ms.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use sensor_common::{EVENT_EXEC, EVENT_EXIT, EVENT_FORK, ProcessEvent};

use super::identity::{Lineage, MAX_PARENTS, Process, ProcessSource, service_of};

/// How long an exited process stays known, for flows counted before it exited.
const KEEP_EXITED: Duration = Duration::from_secs(600);
/// At most this many processes are remembered; beyond it the longest-exited go first.
const MAX_KNOWN: usize = 65_536;

#[derive(Debug, Clone)]
struct Known {
    process: Process,
    ppid: u32,
    exited: Option<SystemTime>,
}

/// An exec or an exit, with the names the table gives the process by then: what the
/// journal keeps of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecExit {
    pub pid: u32,
    /// 0 when its fork was not seen.
    pub ppid: u32,
    pub exit: bool,
    pub comm: String,
    /// What it exec'd; empty when not known.
    pub exe: String,
    pub service: String,
}

/// What the events said about each process.
pub struct ProcessTable {
    known: HashMap<u32, Known>,
    cgroups: CgroupNames,
}

impl ProcessTable {
    /// `cgroup2_root` names services by cgroup id; `None` on hosts without cgroup2.
    pub fn new(cgroup2_root: Option<PathBuf>) -> Self {
        Self {
            known: HashMap::new(),
            cgroups: CgroupNames::new(cgroup2_root),
        }
    }

    /// Takes one poll's events, oldest first, and returns each exec and exit among them, in
    /// order. `now` is injected so tests control time.
    pub fn apply(&mut self, now: SystemTime, events: &[ProcessEvent]) -> Vec<ExecExit> {
        let mut seen = Vec::new();
        for event in events {
            let comm = c_string(&event.comm);
            let cgroup = self.cgroups.path(event.cgroup_id);
            // A fork names its parent; exec and exit keep the parent already known.
            let ppid = match event.kind {
                EVENT_FORK => event.ppid,
                _ => self.known.get(&event.tgid).map_or(0, |k| k.ppid),
            };
            let ancestors = self.ancestors(ppid);
            let service = service_of(
                cgroup.as_deref(),
                &comm,
                ancestors.iter().map(|(_, p)| p.comm.as_str()),
            );
            let parents: Vec<String> = ancestors
                .iter()
                .take(MAX_PARENTS)
                .map(|(_, p)| p.comm.clone())
                .collect();
            // The session is not in the events; the fork tree within the service is.
            let lineage = Lineage {
                session: None,
                ancestors: ancestors
                    .iter()
                    .take_while(|(_, p)| p.service == service)
                    .map(|(pid, _)| *pid)
                    .collect(),
            };
            let process = |exe| Process {
                comm: comm.clone(),
                exe,
                uid: None,
                service: service.clone(),
                parents: parents.clone(),
                lineage: lineage.clone(),
            };
            match event.kind {
                EVENT_FORK => {
                    // The child runs its parent's program until it execs.
                    let exe = self
                        .known
                        .get(&event.ppid)
                        .map(|p| p.process.exe.clone())
                        .unwrap_or_default();
                    self.remember(event.tgid, ppid, process(exe));
                }
                EVENT_EXEC => {
                    let exe = c_string(&event.filename);
                    seen.push(ExecExit {
                        pid: event.tgid,
                        ppid,
                        exit: false,
                        comm: comm.clone(),
                        exe: exe.clone(),
                        service: service.clone(),
                    });
                    self.remember(event.tgid, ppid, process(exe));
                }
                EVENT_EXIT => {
                    let known = self.known.entry(event.tgid).or_insert_with(|| Known {
                        process: process(String::new()),
                        ppid,
                        exited: None,
                    });
                    known.exited = Some(now);
                    seen.push(ExecExit {
                        pid: event.tgid,
                        ppid,
                        exit: true,
                        comm: known.process.comm.clone(),
                        exe: known.process.exe.clone(),
                        service: known.process.service.clone(),
                    });
                }
                _ => {}
            }
        }
        self.expire(now);
        seen
    }

    /// The known ancestors from `ppid` up, parent first, stopping below init.
    fn ancestors(&self, mut ppid: u32) -> Vec<(u32, &Process)> {
        let mut chain = Vec::new();
        while ppid > 1 && chain.len() < MAX_PARENTS {
            let Some(parent) = self.known.get(&ppid) else {
                break;
            };
            chain.push((ppid, &parent.process));
            ppid = parent.ppid;
        }
        chain
    }

    fn remember(&mut self, tgid: u32, ppid: u32, process: Process) {
        self.known.insert(
            tgid,
            Known {
                process,
                ppid,
                exited: None,
            },
        );
    }

    fn expire(&mut self, now: SystemTime) {
        self.known.retain(|_, k| {
            k.exited
                .is_none_or(|at| now.duration_since(at).unwrap_or_default() < KEEP_EXITED)
        });
        if self.known.len() > MAX_KNOWN {
            let mut exited: Vec<(SystemTime, u32)> = self
                .known
                .iter()
                .filter_map(|(tgid, k)| Some((k.exited?, *tgid)))
                .collect();
            exited.sort_unstable();
            for (_, tgid) in exited.iter().take(self.known.len() - MAX_KNOWN) {
                self.known.remove(tgid);
            }
        }
    }
}

impl ProcessSource for ProcessTable {
    fn process(&self, pid: u32) -> Option<Process> {
        self.known.get(&pid).map(|k| k.process.clone())
    }
}

/// /proc first (canonical exe, current unit), the events for a process already gone.
pub struct Identities<'a> {
    pub live: &'a dyn ProcessSource,
    pub events: &'a ProcessTable,
}

impl ProcessSource for Identities<'_> {
    fn process(&self, pid: u32) -> Option<Process> {
        self.live.process(pid).or_else(|| self.events.process(pid))
    }
}

/// A NUL-terminated kernel string as text.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// cgroup id → cgroup path. On cgroup2 a cgroup's id is the inode of its directory, so an
/// unknown id is found by walking the hierarchy once (then cached).
struct CgroupNames {
    root: Option<PathBuf>,
    paths: HashMap<u64, Option<String>>,
}

impl CgroupNames {
    fn new(root: Option<PathBuf>) -> Self {
        Self {
            root,
            paths: HashMap::new(),
        }
    }

    fn path(&mut self, id: u64) -> Option<String> {
        if let Some(path) = self.paths.get(&id) {
            return path.clone();
        }
        let root = self.root.as_deref()?;
        let mut found = HashMap::new();
        walk(root, root, 0, &mut found);
        for (inode, path) in found {
            self.paths.insert(inode, Some(path));
        }
        // Remember misses too: a cgroup that is gone stays gone.
        self.paths.entry(id).or_insert(None).clone()
    }
}

/// Collects inode → cgroup path under `dir`, at most 16 levels and 100,000 cgroups deep.
fn walk(root: &Path, dir: &Path, depth: u32, found: &mut HashMap<u64, String>) {
    if depth > 16 || found.len() > 100_000 {
        return;
    }
    if let Ok(meta) = std::fs::metadata(dir) {
        let relative = dir.strip_prefix(root).unwrap_or(dir);
        found.insert(meta.ino(), format!("/{}", relative.display()));
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &entry.path(), depth + 1, found);
        }
    }
}

/// For tests: a kernel process event of `kind` for `tgid` (parent `ppid`), its comm and the
/// file it exec'd.
#[cfg(test)]
pub(crate) fn test_event(
    kind: u8,
    tgid: u32,
    ppid: u32,
    comm: &str,
    filename: &str,
) -> ProcessEvent {
    let mut e = ProcessEvent {
        kind,
        _pad: [0; 3],
        tgid,
        ppid,
        _pad2: 0,
        cgroup_id: 0,
        comm: [0; 16],
        filename: [0; sensor_common::EXEC_FILENAME_LEN],
    };
    e.comm[..comm.len()].copy_from_slice(comm.as_bytes());
    e.filename[..filename.len()].copy_from_slice(filename.as_bytes());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u8, tgid: u32, ppid: u32, comm: &str, filename: &str) -> ProcessEvent {
        test_event(kind, tgid, ppid, comm, filename)
    }

    #[test]
    fn fork_exec_exit_name_a_process_that_is_gone() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut table = ProcessTable::new(None);
        table.apply(
            t0,
            &[
                event(EVENT_EXEC, 100, 0, "bash", "/bin/bash"),
                event(EVENT_FORK, 101, 100, "bash", ""),
            ],
        );
        assert_eq!(
            table.process(101),
            Some(Process {
                comm: "bash".into(),
                exe: "/bin/bash".into(),
                uid: None,
                service: "bash".into(),
                parents: vec!["bash".into()],
                lineage: Lineage {
                    session: None,
                    ancestors: vec![100],
                },
            }),
            "a forked child runs its parent's program"
        );
        let seen = table.apply(
            t0,
            &[
                event(EVENT_EXEC, 101, 0, "curl", "/usr/bin/curl"),
                event(EVENT_EXIT, 101, 0, "curl", ""),
            ],
        );
        let curl = |exit| ExecExit {
            pid: 101,
            ppid: 100,
            exit,
            comm: "curl".into(),
            exe: "/usr/bin/curl".into(),
            service: "bash".into(),
        };
        assert_eq!(seen, vec![curl(false), curl(true)], "for the journal");
        let gone = table.process(101).expect("known after exit");
        assert_eq!(
            (gone.comm.as_str(), gone.exe.as_str(), gone.service.as_str()),
            ("curl", "/usr/bin/curl", "bash"),
            "no unit: named after its top ancestor, the shell it was forked from"
        );

        table.apply(t0 + KEEP_EXITED, &[]);
        assert_eq!(table.process(101), None, "forgotten after the keep time");
        assert!(table.process(100).is_some(), "still running: kept");
    }

    #[test]
    fn live_proc_wins_over_events() {
        struct Live;
        impl ProcessSource for Live {
            fn process(&self, pid: u32) -> Option<Process> {
                (pid == 7).then(|| Process {
                    comm: "live".into(),
                    exe: "/proc/7/exe".into(),
                    uid: Some(0),
                    service: "s.service".into(),
                    parents: Vec::new(),
                    lineage: Lineage::default(),
                })
            }
        }
        let mut table = ProcessTable::new(None);
        table.apply(
            SystemTime::UNIX_EPOCH,
            &[
                event(EVENT_EXEC, 7, 0, "old", "/old"),
                event(EVENT_EXEC, 8, 0, "gone", "/gone"),
            ],
        );
        let ids = Identities {
            live: &Live,
            events: &table,
        };
        assert_eq!(ids.process(7).map(|p| p.comm), Some("live".into()));
        assert_eq!(ids.process(8).map(|p| p.comm), Some("gone".into()));
        assert_eq!(ids.process(9), None);
    }

    #[test]
    fn cgroup_ids_are_named_by_walking_the_hierarchy() {
        let root = std::env::temp_dir().join(format!("exfil-cg-{}", std::process::id()));
        let unit = root.join("system.slice/postfix@-.service");
        std::fs::create_dir_all(&unit).expect("mkdir");
        let id = std::fs::metadata(&unit).expect("stat").ino();
        let mut names = CgroupNames::new(Some(root.clone()));
        assert_eq!(
            names.path(id).as_deref(),
            Some("/system.slice/postfix@-.service")
        );
        assert_eq!(names.path(1), None, "an unknown id");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}

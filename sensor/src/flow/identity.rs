//! Who a process is: its name, executable, uid, parents, and the service it belongs to, read
//! from /proc.
//!
//! The service is, in order: the container (`container:<id12>`) when its cgroup path names
//! one; else the systemd unit (`postfix@-.service`); else the comm of its top ancestor below
//! init, so that a shell's `curl` counts under the `sshd` it came from.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use super::proc_dir::ProcDir;

/// A process as the agent names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub comm: String,
    pub exe: String,
    /// The real uid, when read while the process ran.
    pub uid: Option<u32>,
    pub service: String,
    /// Comms of its ancestors, parent first, up to its service's root process (at most
    /// `MAX_PARENTS`): `["dovecot"]` for an `imap` process.
    pub parents: Vec<String>,
    /// Who it works with, for following data from a reader to a sender.
    pub lineage: Lineage,
}

/// A process's session and its ancestors in the same service and session: the processes a
/// read by it can reach (`tar` and `curl` of one shell share their shell).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    /// Its session id (`/proc/PID/stat`), when read while it ran.
    pub session: Option<u32>,
    /// Pids of its ancestors in the same cgroup and session, parent first, at most
    /// `MAX_PARENTS`.
    pub ancestors: Vec<u32>,
}

/// How many ancestors a process's chain records.
pub const MAX_PARENTS: usize = 8;

/// The service of processes the agent never saw alive: exited before it looked, and before
/// the kernel's events could name them (e.g. while the agent was stopped).
pub const UNKNOWN: &str = "unknown";

impl Process {
    /// How a service's other row is shown: no single process.
    pub fn other(service: &str) -> Self {
        Self {
            comm: "other".to_owned(),
            exe: String::new(),
            uid: None,
            service: service.to_owned(),
            parents: Vec::new(),
            lineage: Lineage::default(),
        }
    }

    /// A process that exited before the agent could look at it.
    pub fn gone() -> Self {
        Self {
            comm: UNKNOWN.to_owned(),
            exe: String::new(),
            uid: None,
            service: UNKNOWN.to_owned(),
            parents: Vec::new(),
            lineage: Lineage::default(),
        }
    }
}

/// Each process as first seen since its last exec (or its pid's reuse), so that a table row keeps its name after
/// the process is gone.
#[derive(Default)]
pub struct Names {
    by_pid: HashMap<u32, Arc<Process>>,
    /// Pids that exec'd or were forked anew since they were named: their next new row reads them afresh.
    renamed: HashSet<u32>,
}

impl Names {
    pub fn get(&mut self, pid: u32, source: &dyn ProcessSource) -> Arc<Process> {
        let fresh = || Arc::new(source.process(pid).unwrap_or_else(Process::gone));
        if self.renamed.remove(&pid) {
            let process = fresh();
            self.by_pid.insert(pid, Arc::clone(&process));
            return process;
        }
        Arc::clone(self.by_pid.entry(pid).or_insert_with(fresh))
    }

    /// The process exec'd, or a new process took the pid (its fork): rows made from now on
    /// read it afresh (after an exec, the new program and the unit it moved into before the
    /// exec, as a service manager's child does), rows made before keep the name they had.
    /// Without this, a child that touched a file between fork and exec (page faults on its
    /// parent's binary) in a poll of that window would have every later row named as its
    /// parent. Not at an exit: what was read while the process ran is the best name it has
    /// (a zombie's /proc has no exe, and a reaped pid may already be another process's).
    pub fn renew(&mut self, pid: u32) {
        if self.by_pid.contains_key(&pid) {
            self.renamed.insert(pid);
        }
    }

    /// The process as first seen, if a row still names it.
    pub fn peek(&self, pid: u32) -> Option<&Arc<Process>> {
        self.by_pid.get(&pid)
    }

    /// Forgets processes no table row refers to any more; they are read afresh if they
    /// come back.
    pub fn prune(&mut self) {
        self.by_pid.retain(|_, p| Arc::strong_count(p) > 1);
        let by_pid = &self.by_pid;
        self.renamed.retain(|pid| by_pid.contains_key(pid));
    }
}

/// Where process facts come from: `/proc` live, a fake tree in tests.
pub trait ProcessSource {
    fn process(&self, pid: u32) -> Option<Process>;
}

/// Reads `<root>/<pid>/{comm,exe,cgroup,status,stat}`; `root` is `/proc` outside tests.
/// Each process's files are read through its directory held open, and a process whose
/// `comm`, `stat` or `cgroup` cannot be read is gone: all it reads is of one process, or
/// nothing (then the kernel's events name it).
pub struct ProcFs {
    root: PathBuf,
}

/// What `/proc/PID/stat` and `/proc/PID/cgroup` say, for walking up the parents.
struct Node {
    pid: u32,
    comm: String,
    ppid: u32,
    session: u32,
    /// The cgroup path that names services; `None` when the file names none.
    cgroup: Option<String>,
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn node(dir: &ProcDir, pid: u32) -> Option<Node> {
        let Stat {
            comm,
            ppid,
            session,
        } = parse_stat(&dir.read("stat")?)?;
        let cgroup = cgroup_path(&dir.read("cgroup")?);
        Some(Node {
            pid,
            comm,
            ppid,
            session,
            cgroup,
        })
    }
}

impl ProcessSource for ProcFs {
    fn process(&self, pid: u32) -> Option<Process> {
        let dir = ProcDir::open(&self.root, pid)?;
        let comm = dir.read("comm")?.trim_end_matches('\n').to_owned();
        let exe = dir.link("exe").unwrap_or_default();
        let uid = dir.read("status").and_then(|s| real_uid(&s));
        let me = Self::node(&dir, pid)?;
        // Ancestors up to the first that is init, gone, or in another cgroup: the service root.
        let mut chain: Vec<Node> = Vec::new();
        let mut ppid = me.ppid;
        while ppid > 1 && chain.len() <= MAX_PARENTS {
            let Some(parent) =
                ProcDir::open(&self.root, ppid).and_then(|dir| Self::node(&dir, ppid))
            else {
                break;
            };
            ppid = parent.ppid;
            chain.push(parent);
        }
        let own_cgroup = me.cgroup.clone();
        let service = service_of(
            own_cgroup.as_deref(),
            &me.comm,
            chain.iter().map(|n| n.comm.as_str()),
        );
        let parents = chain
            .iter()
            .scan(true, |same_so_far, node| {
                let taken = *same_so_far;
                *same_so_far = node.cgroup == own_cgroup;
                taken.then(|| node.comm.clone())
            })
            .take(MAX_PARENTS)
            .collect();
        let ancestors = chain
            .iter()
            .take_while(|node| node.cgroup == own_cgroup && node.session == me.session)
            .map(|node| node.pid)
            .take(MAX_PARENTS)
            .collect();
        Some(Process {
            comm,
            exe,
            uid,
            service,
            parents,
            lineage: Lineage {
                session: Some(me.session),
                ancestors,
            },
        })
    }
}

/// The service of a process: its container, else its systemd unit, else the comm of its top
/// ancestor below init (`ancestors` parent first; the process itself when it has none).
pub fn service_of<'a>(
    cgroup: Option<&str>,
    comm: &str,
    ancestors: impl Iterator<Item = &'a str>,
) -> String {
    if let Some(cgroup) = cgroup {
        if let Some(id) = container_id(cgroup) {
            return format!("container:{}", &id[..12]);
        }
        if let Some(unit) = unit_in_path(cgroup) {
            return unit;
        }
    }
    ancestors.last().unwrap_or(comm).to_owned()
}

/// The cgroup path in `/proc/PID/cgroup` text that names services: the `name=systemd` (v1)
/// line, else the unified (v2, `0::`) line. On a hybrid host, a v1 root (`/`) beside a
/// deeper unified path is an exited process not yet reaped: the kernel moves an exiting task
/// to the root of each v1 hierarchy (`cgroup_exit`), while the unified line keeps its
/// cgroup, so the unified line names it then. (Read as `/`, a short-lived program of a
/// service was named after its parent's service when its parent had not reaped it yet.)
pub fn cgroup_path(cgroup: &str) -> Option<String> {
    let mut unified = None;
    let mut systemd = None;
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers == "name=systemd" {
            systemd = Some(path.to_owned());
        } else if controllers.is_empty() {
            unified = Some(path.to_owned());
        }
    }
    match (systemd, unified) {
        (Some(v1), Some(v2)) if v1 == "/" && v2 != "/" => Some(v2),
        (Some(v1), _) => Some(v1),
        (None, v2) => v2,
    }
}

/// The systemd unit in `/proc/PID/cgroup` text.
pub fn systemd_unit(cgroup: &str) -> Option<String> {
    unit_in_path(&cgroup_path(cgroup)?)
}

/// The deepest component of a cgroup path that names a systemd service or scope:
/// `/system.slice/postfix@-.service` → `postfix@-.service`.
pub fn unit_in_path(path: &str) -> Option<String> {
    path.rsplit('/')
        .find(|part| part.ends_with(".service") || part.ends_with(".scope"))
        .map(str::to_owned)
}

/// A container id in a cgroup path: a 64-hex component, bare (`/docker/<id>`, kubepods) or
/// in a runtime's scope (`docker-<id>.scope`, `cri-containerd-`, `crio-`, `libpod-`).
pub fn container_id(path: &str) -> Option<&str> {
    path.rsplit('/').find_map(|part| {
        let part = part.strip_suffix(".scope").unwrap_or(part);
        let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
            .iter()
            .find_map(|prefix| part.strip_prefix(prefix))
            .unwrap_or(part);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    })
}

/// What `/proc/PID/stat` says that the agent uses.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    comm: String,
    ppid: u32,
    session: u32,
}

/// `/proc/PID/stat`: `pid (comm) state ppid pgrp session …`; comm may hold spaces and
/// parentheses, so it ends at the last `)`.
fn parse_stat(stat: &str) -> Option<Stat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    let _pgrp = rest.next()?;
    let session = rest.next()?.parse().ok()?;
    Some(Stat {
        comm,
        ppid,
        session,
    })
}

/// The real uid from `/proc/PID/status` (`Uid:\treal\teffective\tsaved\tfs`).
fn real_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn unit_from_hybrid_cgroup_file() {
        let text = "12:pids:/system.slice/postfix@-.service\n\
                    1:name=systemd:/system.slice/postfix@-.service\n\
                    0::/system.slice/postfix@-.service\n";
        assert_eq!(systemd_unit(text).as_deref(), Some("postfix@-.service"));
    }

    /// A process that exited and is not reaped yet, as a hybrid host shows it (read from a
    /// zombie on Linux 6.18): the v1 hierarchies put it at their root, the unified one keeps
    /// its cgroup.
    #[test]
    fn unit_of_an_unreaped_process_from_the_unified_line() {
        let text = "9:name=systemd:/\n8:pids:/\n1:cpu:/\n0::/system.slice/swaks-sender.service\n";
        assert_eq!(systemd_unit(text).as_deref(), Some("swaks-sender.service"));
        // A process at the root of both is there.
        assert_eq!(systemd_unit("9:name=systemd:/\n0::/\n"), None);
    }

    #[test]
    fn unit_from_unified_only_and_sessions() {
        assert_eq!(
            systemd_unit("0::/system.slice/dovecot.service\n").as_deref(),
            Some("dovecot.service")
        );
        assert_eq!(
            systemd_unit("0::/user.slice/user-1000.slice/session-3.scope\n").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(systemd_unit("0::/\n"), None);
        assert_eq!(systemd_unit("garbage"), None);
    }

    const ID: &str = "4f1c2b3a4f1c2b3a4f1c2b3a4f1c2b3a4f1c2b3a4f1c2b3a4f1c2b3a4f1c2b3a";

    #[test]
    fn containers_come_before_units_and_ancestors_after() {
        let none = std::iter::empty;
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
        ] {
            assert_eq!(
                service_of(Some(&path), "nginx", none()),
                "container:4f1c2b3a4f1c",
                "{path}"
            );
        }
        assert_eq!(
            service_of(Some("/system.slice/dovecot.service"), "imap", none()),
            "dovecot.service"
        );
        assert_eq!(
            service_of(Some("/"), "curl", ["bash", "sshd"].into_iter()),
            "sshd",
            "no unit: the top ancestor below init"
        );
        assert_eq!(service_of(None, "cron", none()), "cron");
        assert_eq!(container_id("/system.slice/docker-12ab.scope"), None);
    }

    #[test]
    fn stat_with_awkward_comm() {
        assert_eq!(
            parse_stat("4242 (my (odd) name) S 17 4242 4300 0 -1"),
            Some(Stat {
                comm: "my (odd) name".to_owned(),
                ppid: 17,
                session: 4300
            })
        );
        assert_eq!(parse_stat("4242 broken"), None);
        assert_eq!(
            real_uid("Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\n"),
            Some(1000)
        );
    }

    /// A fake /proc entry: comm, ppid, cgroup path, uid, exe; session 1.
    fn fake(root: &Path, pid: u32, comm: &str, ppid: u32, cgroup: &str, uid: u32) {
        fake_in(root, 1, pid, comm, ppid, cgroup, uid);
    }

    fn fake_in(root: &Path, session: u32, pid: u32, comm: &str, ppid: u32, cgroup: &str, uid: u32) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("comm"), format!("{comm}\n")).expect("comm");
        std::fs::write(
            dir.join("stat"),
            format!("{pid} ({comm}) S {ppid} {session} {session} 0 -1\n"),
        )
        .expect("stat");
        std::fs::write(
            dir.join("cgroup"),
            format!("1:name=systemd:{cgroup}\n0::{cgroup}\n"),
        )
        .expect("cgroup");
        std::fs::write(
            dir.join("status"),
            format!("Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
        )
        .expect("status");
        std::os::unix::fs::symlink(format!("/usr/bin/{comm}"), dir.join("exe")).expect("exe");
    }

    #[test]
    fn reads_a_fake_proc_tree() {
        let root = std::env::temp_dir().join(format!("exfil-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        fake(&root, 1, "init", 0, "/init.scope", 0);
        fake(&root, 100, "dovecot", 1, "/system.slice/dovecot.service", 0);
        fake(
            &root,
            200,
            "imap-login",
            100,
            "/system.slice/dovecot.service",
            0,
        );
        fake(&root, 4242, "imap", 200, "/system.slice/dovecot.service", 8);
        fake(&root, 300, "sshd", 1, "/", 0);
        // A login shell: its own session, shared with what it starts.
        fake_in(&root, 301, 301, "bash", 300, "/", 1000);
        fake_in(&root, 301, 302, "curl", 301, "/", 1000);
        // Reaped between its reads: its comm was read, its cgroup no longer.
        fake_in(&root, 301, 303, "swaks", 301, "/", 1000);
        std::fs::remove_file(root.join("303/cgroup")).expect("rm cgroup");
        let proc_fs = ProcFs::new(&root);
        let imap = proc_fs.process(4242);
        let curl = proc_fs.process(302);
        let half_read = proc_fs.process(303);
        let gone = ProcFs::new("/nonexistent-proc").process(1);
        std::fs::remove_dir_all(&root).expect("cleanup");
        assert_eq!(
            imap,
            Some(Process {
                comm: "imap".into(),
                exe: "/usr/bin/imap".into(),
                uid: Some(8),
                service: "dovecot.service".into(),
                parents: vec!["imap-login".into(), "dovecot".into()],
                lineage: Lineage {
                    session: Some(1),
                    ancestors: vec![200, 100],
                },
            })
        );
        let curl = curl.expect("curl");
        assert_eq!(
            (curl.service.as_str(), curl.uid, curl.parents),
            (
                "sshd",
                Some(1000),
                vec!["bash".to_owned(), "sshd".to_owned()]
            )
        );
        assert_eq!(
            curl.lineage,
            Lineage {
                session: Some(301),
                ancestors: vec![301],
            },
            "its shell, not the sshd outside its session"
        );
        assert_eq!(gone, None);
        assert_eq!(
            half_read, None,
            "gone, not named after its shell's service without its cgroup"
        );
    }
}

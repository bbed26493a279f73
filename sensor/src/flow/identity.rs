//! Who a process is: its name, executable and the service it belongs to, read from /proc.

use std::path::PathBuf;

/// A process as the agent names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub comm: String,
    pub exe: String,
    /// The systemd unit (`postfix@-.service`) when there is one, else the process's comm.
    pub service: String,
}

impl Process {
    /// A process that exited before the agent could look at it.
    pub fn gone() -> Self {
        Self {
            comm: String::new(),
            exe: String::new(),
            service: "unknown".to_owned(),
        }
    }
}

/// Each process as first seen, so that a table row keeps its name after the process is gone.
#[derive(Default)]
pub struct Names {
    by_pid: std::collections::HashMap<u32, std::sync::Arc<Process>>,
}

impl Names {
    pub fn get(&mut self, pid: u32, source: &dyn ProcessSource) -> std::sync::Arc<Process> {
        std::sync::Arc::clone(self.by_pid.entry(pid).or_insert_with(|| {
            std::sync::Arc::new(source.process(pid).unwrap_or_else(Process::gone))
        }))
    }
}

/// Where process facts come from: `/proc` live, a fake tree in tests.
pub trait ProcessSource {
    fn process(&self, pid: u32) -> Option<Process>;
}

/// Reads `<root>/<pid>/{comm,exe,cgroup}`; `root` is `/proc` outside tests.
pub struct ProcFs {
    root: PathBuf,
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

impl ProcessSource for ProcFs {
    fn process(&self, pid: u32) -> Option<Process> {
        let dir = self.root.join(pid.to_string());
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        let comm = comm.trim_end_matches('\n').to_owned();
        let exe = std::fs::read_link(dir.join("exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let service = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|text| systemd_unit(&text))
            .unwrap_or_else(|| comm.clone());
        Some(Process { comm, exe, service })
    }
}

/// The systemd unit in `/proc/PID/cgroup` text: the deepest path component that names a
/// service or scope, from the `name=systemd` (v1) line or the unified (v2, `0::`) line.
pub fn systemd_unit(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            (controllers == "name=systemd" || controllers.is_empty()).then_some(path)
        })
        .find_map(unit_in_path)
}

/// The deepest component of a cgroup path that names a systemd service or scope:
/// `/system.slice/postfix@-.service` → `postfix@-.service`.
pub fn unit_in_path(path: &str) -> Option<String> {
    path.rsplit('/')
        .find(|part| part.ends_with(".service") || part.ends_with(".scope"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_from_hybrid_cgroup_file() {
        let text = "12:pids:/system.slice/postfix@-.service\n\
                    1:name=systemd:/system.slice/postfix@-.service\n\
                    0::/system.slice/postfix@-.service\n";
        assert_eq!(systemd_unit(text).as_deref(), Some("postfix@-.service"));
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

    #[test]
    fn reads_a_fake_proc_tree() {
        let root = std::env::temp_dir().join(format!("exfil-proc-{}", std::process::id()));
        let dir = root.join("4242");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("comm"), "imap\n").expect("comm");
        std::fs::write(dir.join("cgroup"), "0::/system.slice/dovecot.service\n").expect("cgroup");
        std::os::unix::fs::symlink("/usr/lib/dovecot/imap", dir.join("exe")).expect("exe");
        let found = ProcFs::new(&root).process(4242);
        std::fs::remove_dir_all(&root).expect("cleanup");
        assert_eq!(
            found,
            Some(Process {
                comm: "imap".into(),
                exe: "/usr/lib/dovecot/imap".into(),
                service: "dovecot.service".into(),
            })
        );
        assert_eq!(ProcFs::new("/nonexistent-proc").process(1), None);
    }
}

//! The test host's own set-up: root, network namespaces, service cgroups.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Panics with a clear message unless the tests run as root: they load BPF programs and
/// create network namespaces. `cargo xtask test` runs them; there is no skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "the end-to-end tests load BPF programs and need root (uid is {uid}); run `cargo xtask test` as root"
    );
}

pub(crate) fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace joined to this host by a veth pair. Deleted (with its veth pair) on
/// drop.
pub struct NetNs {
    pub name: String,
    /// This host's end: 198.51.100.1 and 2001:db8::1.
    pub host_ip: &'static str,
    pub host_ip6: &'static str,
    /// The namespace's end: 198.51.100.2 (also 198.51.100.3) and 2001:db8::2.
    pub peer_ip: &'static str,
    pub peer_ip_2: &'static str,
    pub peer_ip6: &'static str,
    /// Held (flock) while the namespace exists: test runs of other checkouts on this machine
    /// wait for it rather than take its name and addresses from under it. Released on close.
    _lock: std::fs::File,
}

impl NetNs {
    /// The "outside world" (documentation ranges, RFC 5737 and RFC 3849).
    pub fn outside() -> anyhow::Result<Self> {
        Self::create("exfil-e2e")
    }

    fn create(name: &str) -> anyhow::Result<Self> {
        let lock_path = std::env::temp_dir().join(format!("{name}.netns.lock"));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        // SAFETY: flock on a descriptor we own; it blocks until the other holder closes.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
            bail!(
                "locking {}: {}",
                lock_path.display(),
                std::io::Error::last_os_error()
            );
        }
        // A namespace left by a killed earlier run would hold the same addresses. The veth
        // goes first and by name: deleting a namespace destroys its devices later, in the
        // kernel's cleanup work, so the host end can outlive `ip netns del` for a while on a
        // busy machine (and `link add` would then find it).
        let _ = run("ip", &["link", "del", &format!("{name}-h")]);
        let _ = run("ip", &["netns", "del", name]);
        run("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
            host_ip: "198.51.100.1",
            host_ip6: "2001:db8::1",
            peer_ip: "198.51.100.2",
            peer_ip_2: "198.51.100.3",
            peer_ip6: "2001:db8::2",
            _lock: lock,
        };
        let host_if = format!("{name}-h");
        let peer_if = format!("{name}-p");
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns", name,
            ],
        )?;
        let v4 = format!("{}/24", ns.host_ip);
        run("ip", &["addr", "add", &v4, "dev", &host_if])?;
        // nodad: usable at once, without duplicate address detection's delay.
        let v6 = format!("{}/64", ns.host_ip6);
        run("ip", &["addr", "add", &v6, "dev", &host_if, "nodad"])?;
        run("ip", &["link", "set", &host_if, "up"])?;
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", name, "ip"];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        for ip in [ns.peer_ip, ns.peer_ip_2] {
            in_ns(&["addr", "add", &format!("{ip}/24"), "dev", &peer_if])?;
        }
        let v6 = format!("{}/64", ns.peer_ip6);
        in_ns(&["addr", "add", &v6, "dev", &peer_if, "nodad"])?;
        in_ns(&["link", "set", &peer_if, "up"])?;
        in_ns(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// One more host in the namespace: `ip` on its end of the veth, reachable from this host
    /// (a route through the veth when `ip` is outside 198.51.100.0/24), and able to reach
    /// this host back. For the scenario hosts: attackers at 198.51.100.7, office clients and
    /// the backup host in 192.0.2.0/24. Gone with the veth.
    pub fn add_host(&self, ip: &str) -> anyhow::Result<()> {
        let peer_if = format!("{}-p", self.name);
        let host_if = format!("{}-h", self.name);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "ip",
                "addr",
                "add",
                &format!("{ip}/32"),
                "dev",
                &peer_if,
            ],
        )?;
        if !ip.starts_with("198.51.100.") {
            run(
                "ip",
                &["route", "replace", &format!("{ip}/32"), "dev", &host_if],
            )?;
        }
        Ok(())
    }

    /// Routes `cidr` from this host through the namespace's end, so that any address in it is
    /// a destination datagrams can be sent to (the namespace drops them). Gone with the veth.
    pub fn route_via_peer(&self, cidr: &str) -> anyhow::Result<()> {
        run(
            "ip",
            &[
                "route",
                "add",
                cidr,
                "via",
                self.peer_ip,
                "dev",
                &format!("{}-h", self.name),
            ],
        )
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // The pair is gone when this returns (see `create`).
        let _ = run("ip", &["link", "del", &format!("{}-h", self.name)]);
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A systemd-style service cgroup, `system.slice/NAME`, made in the cgroup2 hierarchy and in
/// the v1 `name=systemd` one when it exists (both found in /proc/mounts), so that
/// `/proc/PID/cgroup` of a process placed in it reads as under systemd. Removed on drop.
pub struct ServiceCgroup {
    dirs: Vec<PathBuf>,
}

impl ServiceCgroup {
    pub fn create(unit: &str) -> anyhow::Result<Self> {
        let mounts = std::fs::read_to_string("/proc/mounts")?;
        let roots: Vec<PathBuf> = mounts
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let systemd_v1 = f.get(2) == Some(&"cgroup")
                    && f.get(3)
                        .is_some_and(|o| o.split(',').any(|o| o == "name=systemd"));
                (f.get(2) == Some(&"cgroup2") || systemd_v1).then(|| PathBuf::from(f[1]))
            })
            .collect();
        if !roots
            .iter()
            .any(|r| mounts.contains(&format!("{} cgroup2", r.display())))
        {
            bail!("no cgroup2 hierarchy in /proc/mounts");
        }
        let mut made = Self { dirs: Vec::new() };
        for root in roots {
            let dir = root.join("system.slice").join(unit);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            made.dirs.push(dir);
        }
        Ok(made)
    }

    /// The processes in the cgroup now (each hierarchy's `cgroup.procs`, together).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Makes `cmd`'s process start inside the cgroup (it moves itself before exec).
    pub fn place(&self, cmd: &mut Command) -> anyhow::Result<()> {
        use std::os::unix::{ffi::OsStrExt as _, process::CommandExt as _};
        let procs: Vec<std::ffi::CString> = self
            .dirs
            .iter()
            .map(|d| std::ffi::CString::new(d.join("cgroup.procs").as_os_str().as_bytes()))
            .collect::<Result<_, _>>()?;
        // SAFETY: between fork and exec only open/write/close on prepared strings, all
        // async-signal-safe; "0" moves the writing process itself.
        unsafe {
            cmd.pre_exec(move || {
                for path in &procs {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if written != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl Drop for ServiceCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

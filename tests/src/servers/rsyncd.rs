//! The backup host of issue 11's normal day: Debian's rsync daemon in the test namespace,
//! with a writable module `backup`, behind a front door on the rsync port
//! (`counting_proxy.py`) that hands it the connection as inetd would (`rsync --server
//! --daemon` on pipes) and counts what crosses: what the server's nightly `rsync` sent,
//! counted at the receiving end. It runs in the unit given (the test's simulated hosts) and
//! is killed on drop.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::{NetNs, Proc, Relayed, ServiceCgroup};

/// The rsync daemon's port.
pub const RSYNC_PORT: u16 = 873;

pub struct BackupHost {
    door: Proc,
    store: PathBuf,
}

impl BackupHost {
    /// Listens on `ip`:873 in `ns` (`ip` one of its hosts: `NetNs::add_host`), in `unit`, for
    /// one connection to the daemon (module `backup`: `dir/store`).
    pub fn start(ns: &NetNs, ip: &str, dir: &Path, unit: &ServiceCgroup) -> anyhow::Result<Self> {
        let store = dir.join("store");
        std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
        let conf = dir.join("rsyncd.conf");
        std::fs::write(
            &conf,
            format!(
                "use chroot = no\nlog file = {d}/rsyncd.log\n\
                 [backup]\npath = {s}\nread only = no\nuid = root\ngid = root\n",
                d = dir.display(),
                s = store.display()
            ),
        )
        .with_context(|| format!("writing {}", conf.display()))?;
        let mut cmd = ns.command(Path::new("/usr/bin/python3"));
        cmd.arg("-I")
            .arg("-c")
            .arg(include_str!("counting_proxy.py"))
            .args([ip, &RSYNC_PORT.to_string()])
            .args(["/usr/bin/rsync", "--server", "--daemon"])
            .arg(format!("--config={}", conf.display()))
            .arg(".");
        unit.place(&mut cmd)?;
        let mut door = Proc::spawn(cmd, "the backup host (counting_proxy.py, rsync --daemon)")?;
        door.expect_line::<String>("listening")?;
        Ok(Self { door, store })
    }

    /// The module's directory on the backup host.
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// Waits for the one connection to end; what it carried (`to_server`: what the client
    /// sent, all of which the backup host received).
    pub fn finish(mut self) -> anyhow::Result<Relayed> {
        let to_server = self.door.expect_line("received")?;
        let from_server = self.door.expect_line("sent")?;
        Ok(Relayed {
            from_server,
            to_server,
        })
    }
}

/// The regular files under `dir`, by path relative to it, with their sizes.
pub fn files_under(dir: &Path) -> anyhow::Result<BTreeMap<PathBuf, u64>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if meta.is_file() {
                let path = entry.path();
                let relative = path.strip_prefix(dir)?.to_path_buf();
                files.insert(relative, meta.len());
            }
        }
    }
    Ok(files)
}

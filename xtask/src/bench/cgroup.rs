//! A systemd-style service cgroup for the bench's own processes, so that the agent names
//! them (and its per-service metrics hold exactly their bytes) on a shared machine.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// A systemd-style service cgroup, `system.slice/NAME`, in the `name=systemd` v1 hierarchy
/// and in the cgroup2 one, whichever are mounted; removed on drop.
pub(super) struct ServiceCgroup {
    dirs: Vec<PathBuf>,
}

impl ServiceCgroup {
    pub(super) fn create(unit: &str) -> anyhow::Result<Self> {
        let mounts = std::fs::read_to_string("/proc/mounts")?;
        let mut made = Self { dirs: Vec::new() };
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(dir), Some(kind), Some(options)) = (f.get(1), f.get(2), f.get(3)) else {
                continue;
            };
            let systemd_v1 = *kind == "cgroup" && options.split(',').any(|o| o == "name=systemd");
            if *kind == "cgroup2" || systemd_v1 {
                let dir = Path::new(dir).join("system.slice").join(unit);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                made.dirs.push(dir);
            }
        }
        if made.dirs.is_empty() {
            bail!("neither a cgroup2 nor a name=systemd hierarchy in /proc/mounts");
        }
        Ok(made)
    }

    pub(super) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }
}

impl Drop for ServiceCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // Empty by now: the flood and the churn have been waited for.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Makes `cmd`'s process move itself into the cgroups of `procs` before it execs.
pub(super) fn place(cmd: &mut Command, procs: &[PathBuf]) -> anyhow::Result<()> {
    use std::os::unix::{ffi::OsStrExt as _, process::CommandExt as _};
    let procs: Vec<std::ffi::CString> = procs
        .iter()
        .map(|p| std::ffi::CString::new(p.as_os_str().as_bytes()))
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

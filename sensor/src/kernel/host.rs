//! What the agent needs from the host before it loads anything: privileges, tracefs, bpffs.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum HostError {
    #[error(
        "exfil-sensor needs root, or the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN \
         (running as uid {uid} with effective capabilities {cap_eff:#x})"
    )]
    Privileges { uid: u32, cap_eff: u64 },
    #[error(
        "cannot mount {fstype} at {path}: {cause}; mount it by hand: mount -t {fstype} {fstype} {path}"
    )]
    Mount {
        fstype: &'static str,
        path: String,
        cause: std::io::Error,
    },
    #[error("cannot read {path}: {cause}")]
    Read {
        path: &'static str,
        cause: std::io::Error,
    },
}

// include/uapi/linux/capability.h
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Whether an effective capability set allows loading and attaching our programs: CAP_BPF and
/// CAP_PERFMON for tracepoints and maps, CAP_NET_ADMIN for cgroup programs (kernel ≥ 5.8), or
/// CAP_SYS_ADMIN, which implies them all.
pub fn capabilities_suffice(cap_eff: u64) -> bool {
    let has = |cap: u32| cap_eff & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON) && has(CAP_NET_ADMIN))
}

/// Fails with one line naming what is missing when this process may not load BPF programs.
pub fn check_privileges() -> Result<(), HostError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|cause| HostError::Read {
        path: "/proc/self/status",
        cause,
    })?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    if capabilities_suffice(cap_eff) {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    Err(HostError::Privileges { uid, cap_eff })
}

/// Where a filesystem of `fstype` is mounted, from `/proc/mounts` text (first match).
pub fn find_mount(mounts: &str, fstype: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == fstype).then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// `/proc/mounts` writes space, tab, newline and backslash in paths as `\040`-style octal.
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = bytes.get(i + 1..i + 4)
            && let Ok(value) = u8::from_str_radix(std::str::from_utf8(octal).unwrap_or("x"), 8)
        {
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the cgroup2 hierarchy is mounted: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones; `None` on v1-only hosts.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    find_mount(&mounts, "cgroup2")
}

/// The mount point of `fstype`, mounting it at `default` when it is not mounted anywhere.
pub fn ensure_mounted(fstype: &'static str, default: &Path) -> Result<PathBuf, HostError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|cause| HostError::Read {
        path: "/proc/mounts",
        cause,
    })?;
    if let Some(found) = find_mount(&mounts, fstype) {
        return Ok(found);
    }
    let mount_error = |cause| HostError::Mount {
        fstype,
        path: default.display().to_string(),
        cause,
    };
    std::fs::create_dir_all(default).map_err(mount_error)?;
    let target = CString::new(default.as_os_str().as_bytes())
        .map_err(|_| mount_error(std::io::Error::other("path holds a NUL byte")))?;
    let kind = CString::new(fstype).map_err(|_| mount_error(std::io::Error::other("NUL")))?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call;
    // a NULL data argument is allowed for both filesystems.
    let rc = unsafe {
        libc::mount(
            kind.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(mount_error(std::io::Error::last_os_error()));
    }
    tracing::info!(fstype, path = %default.display(), "mounted");
    Ok(default.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "sysfs /sys sysfs rw,nosuid 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
tracefs /sys/kernel/my\\040tracing tracefs rw,relatime 0 0
";

    #[test]
    fn finds_mounts_by_type_in_a_hybrid_layout() {
        assert_eq!(
            find_mount(HYBRID, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            find_mount(HYBRID, "tracefs"),
            Some(PathBuf::from("/sys/kernel/my tracing"))
        );
        assert_eq!(find_mount(HYBRID, "bpf"), None);
    }

    #[test]
    fn a_mount_that_fails_names_the_fix() {
        // No filesystem has this type, so the mount fails whoever runs the test.
        let target = std::env::temp_dir().join(format!("exfil-mnt-{}", std::process::id()));
        let err = ensure_mounted("exfilnofs", &target).expect_err("no such filesystem");
        let _ = std::fs::remove_dir(&target);
        let text = err.to_string();
        let expected_start = format!("cannot mount exfilnofs at {}: ", target.display());
        assert!(text.starts_with(&expected_start), "{text}");
        assert!(
            text.ends_with(&format!(
                "; mount it by hand: mount -t exfilnofs exfilnofs {}",
                target.display()
            )),
            "{text}"
        );
    }

    #[test]
    fn capability_sets() {
        let bit = |c: u32| 1u64 << c;
        assert!(capabilities_suffice(bit(CAP_SYS_ADMIN)));
        assert!(capabilities_suffice(
            bit(CAP_BPF) | bit(CAP_PERFMON) | bit(CAP_NET_ADMIN)
        ));
        assert!(!capabilities_suffice(bit(CAP_BPF) | bit(CAP_PERFMON)));
        assert!(!capabilities_suffice(0));
    }
}

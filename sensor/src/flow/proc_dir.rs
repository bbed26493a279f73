//! One process's `/proc/PID` directory, held open while its files are read, so that every
//! read answers for the same process: once it is reaped, reads through the held directory
//! fail (the kernel revalidates each lookup against the task), even when a new process has
//! the pid by then. Reading by path instead mixed two states: a `swaks` whose comm was read
//! and whose cgroup vanished before the next read was named after its shell's service.

use std::{
    ffi::CString,
    fs::File,
    io::Read as _,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

pub struct ProcDir {
    dir: File,
}

impl ProcDir {
    /// `None` when there is no such directory (the process is gone).
    pub fn open(root: &Path, pid: u32) -> Option<Self> {
        let dir = File::open(root.join(pid.to_string())).ok()?;
        dir.metadata().ok()?.is_dir().then_some(Self { dir })
    }

    fn open_at(&self, name: &str) -> Option<OwnedFd> {
        let name = CString::new(name).ok()?;
        // SAFETY: a valid directory fd and a NUL-terminated name; the returned fd, when
        // not negative, is new and owned by nobody else.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        // SAFETY: see above.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// A file of the directory as text; `None` when the process is gone (or the file
    /// unreadable).
    pub fn read(&self, name: &str) -> Option<String> {
        let mut text = String::new();
        File::from(self.open_at(name)?)
            .read_to_string(&mut text)
            .ok()?;
        Some(text)
    }

    /// Where a link of the directory points (`exe`); `None` when it cannot be read (a
    /// kernel thread, a zombie, a process gone).
    pub fn link(&self, name: &str) -> Option<String> {
        let name = CString::new(name).ok()?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: a valid directory fd, a NUL-terminated name and a buffer of the length
        // passed; the kernel writes at most that many bytes.
        let len = unsafe {
            libc::readlinkat(
                self.dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let len = usize::try_from(len).ok()?;
        buf.truncate(len);
        Some(
            Path::new(std::ffi::OsStr::from_bytes(&buf))
                .to_string_lossy()
                .into_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_through_the_held_directory_and_fails_once_it_is_gone() {
        let root = std::env::temp_dir().join(format!("exfil-procdir-{}", std::process::id()));
        let dir = root.join("42");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("comm"), "swaks\n").expect("comm");
        std::os::unix::fs::symlink("/usr/bin/swaks", dir.join("exe")).expect("exe");
        let held = ProcDir::open(&root, 42).expect("open");
        assert_eq!(held.read("comm").as_deref(), Some("swaks\n"));
        assert_eq!(held.link("exe").as_deref(), Some("/usr/bin/swaks"));
        assert_eq!(held.read("exe"), None, "links are not followed as files");
        assert_eq!(held.read("cgroup"), None);
        assert!(ProcDir::open(&root, 43).is_none());
        std::fs::remove_dir_all(&root).expect("cleanup");
        assert_eq!(held.read("comm"), None, "gone with its directory");
    }

    /// A real process: its files read while it runs; after it is reaped, nothing, though
    /// the directory is still held.
    #[test]
    fn a_reaped_process_reads_as_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let held = ProcDir::open(Path::new("/proc"), child.id()).expect("open");
        // (Its comm may still be this thread's: the exec need not have renamed it yet.)
        assert!(held.read("comm").is_some());
        assert!(held.read("cgroup").is_some());
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert_eq!(held.read("comm"), None);
        assert_eq!(held.read("cgroup"), None);
        assert_eq!(held.link("exe"), None);
    }
}

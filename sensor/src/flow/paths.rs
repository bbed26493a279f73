//! File paths from the kernel's dentry walks: the names up to a filesystem's root, plus
//! where that filesystem is mounted.

use std::collections::HashMap;

use sensor_common::{FilePathEvent, PATH_DEPTH};

/// Mount points by device, from `/proc/self/mountinfo`: the first mount of each device's
/// root (a bind mount of a subdirectory is not where the filesystem's root lies).
#[derive(Debug, Default)]
pub struct Mounts {
    by_device: HashMap<(u32, u32), String>,
}

impl Mounts {
    pub fn read() -> Self {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    /// mountinfo lines: `ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS ...` (proc(5)).
    pub fn parse(text: &str) -> Self {
        let mut by_device = HashMap::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(device), Some(root), Some(mount_point)) =
                (fields.get(2), fields.get(3), fields.get(4))
            else {
                continue;
            };
            let Some((major, minor)) = device.split_once(':') else {
                continue;
            };
            let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
                continue;
            };
            if *root == "/" {
                by_device
                    .entry((major, minor))
                    .or_insert_with(|| unescape(mount_point));
            }
        }
        Self { by_device }
    }

    fn mount_point(&self, dev: u32) -> Option<&str> {
        self.by_device
            .get(&(dev >> 20, dev & 0xf_ffff))
            .map(String::as_str)
    }
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A file's path as the kernel walked it, before the mount point is known: what the agent
/// keeps of a [`FilePathEvent`] between the ring and the poll (the names joined, a few dozen
/// bytes, instead of the event's 1,048), so that a burst of thousands of new files costs little
/// memory while it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkedPath {
    pub dev: u32,
    pub ino: u64,
    /// The walk reached the filesystem's root (else it was cut at `PATH_DEPTH`).
    reached_root: bool,
    /// The names from the root (or the cut) down to the file, joined with `/`.
    inner: Box<str>,
}

impl WalkedPath {
    pub fn from_event(event: &FilePathEvent) -> Self {
        let depth = (event.depth as usize).min(PATH_DEPTH);
        let names: Vec<std::borrow::Cow<'_, str>> = event.names[..depth]
            .iter()
            .map(|raw| {
                let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
                escape_name(&raw[..end])
            })
            .collect();
        let reached_root = names.last().is_some_and(|n| n == "/");
        let inner: Vec<&str> = names
            .iter()
            .rev()
            .map(AsRef::as_ref)
            .filter(|n| *n != "/")
            .collect();
        Self {
            dev: event.dev,
            ino: event.ino,
            reached_root,
            inner: inner.join("/").into_boxed_str(),
        }
    }
}

/// A file name as text that keeps its exact bytes and stays on one line: a backslash is
/// written `\\`, a newline `\n`, a tab `\t`, any other control character and every byte that
/// is not UTF-8 `\xHH` (as `ls -b` does). Names without any of these are unchanged.
pub fn escape_name(raw: &[u8]) -> std::borrow::Cow<'_, str> {
    let plain = |c: char| c != '\\' && !c.is_control();
    match std::str::from_utf8(raw) {
        Ok(name) if name.chars().all(plain) => std::borrow::Cow::Borrowed(name),
        _ => {
            let mut out = String::with_capacity(raw.len() + 8);
            for chunk in raw.utf8_chunks() {
                for c in chunk.valid().chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\t' => out.push_str("\\t"),
                        c if c.is_control() => {
                            let mut buf = [0; 4];
                            for b in c.encode_utf8(&mut buf).bytes() {
                                out.push_str(&format!("\\x{b:02x}"));
                            }
                        }
                        c => out.push(c),
                    }
                }
                for b in chunk.invalid() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            std::borrow::Cow::Owned(out)
        }
    }
}

/// The absolute path of the file the walk names. A walk cut at `PATH_DEPTH` starts with
/// `…/`; a device with no known mount point is shown as `[major:minor]/path`.
pub fn path_of(walked: &WalkedPath, mounts: &Mounts) -> String {
    let inner = &walked.inner;
    if !walked.reached_root {
        return format!("…/{inner}");
    }
    match mounts.mount_point(walked.dev) {
        Some("/") => format!("/{inner}"),
        Some(mount_point) => format!("{mount_point}/{inner}"),
        None => format!("[{}:{}]/{inner}", walked.dev >> 20, walked.dev & 0xf_ffff),
    }
}

#[cfg(test)]
mod tests {
    use sensor_common::PATH_NAME_LEN;

    use super::*;

    #[test]
    fn odd_names_are_escaped_to_one_line_that_keeps_every_byte() {
        assert!(matches!(
            escape_name("q3 exports é.csv".as_bytes()),
            std::borrow::Cow::Borrowed("q3 exports é.csv")
        ));
        assert_eq!(
            escape_name(b"a\nb\xffc\\d\te\x1b.bin"),
            "a\\nb\\xffc\\\\d\\te\\x1b.bin"
        );
        // A cut multi-byte sequence is its bytes, the character after it whole.
        assert_eq!(escape_name(b"\xc3\xa9\xc3"), "\u{e9}\\xc3");
    }

    fn event(dev: u32, names: &[&str]) -> WalkedPath {
        let mut e = FilePathEvent {
            dev,
            depth: u32::try_from(names.len()).expect("few"),
            ino: 1,
            names: [[0; PATH_NAME_LEN]; PATH_DEPTH],
        };
        for (slot, name) in e.names.iter_mut().zip(names) {
            slot[..name.len()].copy_from_slice(name.as_bytes());
        }
        WalkedPath::from_event(&e)
    }

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 254:16 / /var/mail rw - ext4 /dev/vdb rw
31 22 254:16 /sub /srv/bind rw - ext4 /dev/vdb rw
32 22 254:32 / /mnt/with\\040space rw - ext4 /dev/vdc rw
";

    #[test]
    fn paths_join_mount_point_and_names() {
        let mounts = Mounts::parse(MOUNTINFO);
        let root_fs = 254 << 20; // 254:0
        let mail = (254 << 20) | 16;
        assert_eq!(
            path_of(&event(root_fs, &["shadow", "etc", "/"]), &mounts),
            "/etc/shadow"
        );
        assert_eq!(
            path_of(
                &event(mail, &["1700.M1.host", "cur", "alice", "/"]),
                &mounts
            ),
            "/var/mail/alice/cur/1700.M1.host"
        );
        assert_eq!(
            path_of(&event((254 << 20) | 32, &["f", "/"]), &mounts),
            "/mnt/with space/f"
        );
        assert_eq!(
            path_of(&event((7 << 20) | 3, &["f", "/"]), &mounts),
            "[7:3]/f",
            "unknown device"
        );
        assert_eq!(
            path_of(&event(root_fs, &["f", "deep"]), &mounts),
            "…/deep/f",
            "a walk cut short"
        );
    }
}

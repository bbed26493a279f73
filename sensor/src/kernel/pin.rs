//! Pinned maps and links under bpffs, so that the kernel keeps counting while no agent runs
//! and a restarted agent (even after `kill -9`) continues the same totals.
//!
//! bpffs holds only pinned objects and directories, so what made the pins is written in
//! directory names: `<pin_dir>/layout-N/` holds the maps of map layout N, and
//! `<pin_dir>/layout-N/links-<object hash>/` the links of one build of the programs. aya
//! reuses a pinned map by path without comparing its definition, so maps of another layout
//! must never reach it: they are removed, and their totals restart, before anything loads.

use std::path::{Path, PathBuf};

use sensor_common::MAP_LAYOUT_VERSION;
use thiserror::Error;

/// Every map the programs write: pinned programs outlive the agent that loaded them, and keep
/// writing to the maps they were loaded with, so a later agent must open those same maps
/// (a ring buffer of its own would never see an event). Only read-only data is not pinned.
pub const PINNED_MAPS: &[&str] = &[
    "PROCESS_EVENTS",
    "FLOWS",
    "FLOW_OVERFLOW",
    "UNATTRIBUTED",
    "KERNEL_ERRORS",
    "KERNEL_DROPS",
    "SOCK_ROLE",
    "UDP_DEST",
    "AGENT",
    "FILE_READS",
    "FILE_OVERFLOW",
    "FILE_WRITES",
    "FILE_WRITE_OVERFLOW",
    "PATH_SENT",
    "FILE_PATHS",
    "DNS_EVENTS",
    "DNS_STATS",
    "DNS_SOCKETS",
    "DNS_SCRATCH",
];

#[derive(Debug, Error)]
pub enum PinError {
    #[error("pin directory {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
}

/// What an earlier agent left, and so what this one may reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// No maps of this layout: start from zero.
    Fresh,
    /// The same maps, but no links of this build: attach ours, then retire the others.
    Maps,
    /// The same maps and links of this very build: keep them as they are.
    MapsAndLinks,
}

/// The pins of this build.
pub struct Pins {
    layout_dir: PathBuf,
    links_dir: PathBuf,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PinError + '_ {
    move |cause| PinError::Io {
        path: path.display().to_string(),
        cause,
    }
}

impl Pins {
    /// Looks at what is pinned under `dir` for the object `object`, removes pins of other map
    /// layouts, and creates this build's directories.
    pub fn prepare(dir: &Path, object: &[u8]) -> Result<(Self, Reuse), PinError> {
        let layout_dir = dir.join(format!("layout-{MAP_LAYOUT_VERSION}"));
        let links_dir = layout_dir.join(format!("links-{:016x}", fingerprint(object)));
        for entry in read_dir(dir)? {
            if entry != layout_dir {
                tracing::warn!(
                    pins = %entry.display(),
                    "pins of another map layout: removing them; their totals restart at zero"
                );
                std::fs::remove_dir_all(&entry).map_err(io(&entry))?;
            }
        }
        // Kept programs write to the maps they were loaded with: with a map's pin gone (removed
        // while no agent ran), this agent would read a new, empty map the programs never see.
        // They are attached anew instead, on the maps the pins give.
        let missing: Vec<&str> = PINNED_MAPS
            .iter()
            .copied()
            .filter(|m| !layout_dir.join(m).exists())
            .collect();
        let reuse = if links_dir.is_dir() && missing.is_empty() {
            Reuse::MapsAndLinks
        } else if layout_dir.is_dir() {
            if !missing.is_empty() {
                tracing::warn!(
                    pins = %layout_dir.display(),
                    missing = %missing.join(","),
                    "map pins removed while no agent ran: attaching the programs anew; the \
                     totals of those maps restart at zero"
                );
            }
            Reuse::Maps
        } else {
            Reuse::Fresh
        };
        std::fs::create_dir_all(&links_dir).map_err(io(&links_dir))?;
        Ok((
            Self {
                layout_dir,
                links_dir,
            },
            reuse,
        ))
    }

    pub fn map_path(&self, map: &str) -> PathBuf {
        self.layout_dir.join(map)
    }

    pub fn link_path(&self, program: &str) -> PathBuf {
        self.links_dir.join(program)
    }

    /// Unpins the links of other builds, which detaches their programs: called once this
    /// build's are attached, so the hooks are never left without a program (for that moment
    /// both count: over, never under).
    pub fn retire_other_builds(&self) -> Result<(), PinError> {
        for entry in read_dir(&self.layout_dir)? {
            let is_links = entry
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("links-"));
            if is_links && entry != self.links_dir {
                tracing::info!(links = %entry.display(), "retiring the programs of another build");
                std::fs::remove_dir_all(&entry).map_err(io(&entry))?;
            }
        }
        Ok(())
    }
}

/// The entries of `dir`, or none when it does not exist yet.
fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, PinError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()).map_err(io(dir)))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(dir)(e)),
    }
}

/// FNV-1a, 64 bits, of the eBPF object: tells builds apart; not a security boundary.
fn fingerprint(object: &[u8]) -> u64 {
    object.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("exfil-pins-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_same_build_keeps_everything_a_new_build_keeps_the_maps() {
        let dir = temp_dir("reuse");
        let (pins, reuse) = Pins::prepare(&dir, b"object A").expect("prepare");
        assert_eq!(reuse, Reuse::Fresh);
        for map in PINNED_MAPS {
            std::fs::write(pins.map_path(map), "kept").expect("a pinned map");
        }
        std::fs::write(pins.link_path("sock_send_length"), "A's link").expect("a link");
        let (_, reuse) = Pins::prepare(&dir, b"object A").expect("prepare again");
        assert_eq!(reuse, Reuse::MapsAndLinks);

        let (pins_b, reuse) = Pins::prepare(&dir, b"object B").expect("new build");
        assert_eq!(reuse, Reuse::Maps);
        assert!(pins_b.map_path("FLOWS").exists(), "same layout: maps kept");
        assert!(
            pins.link_path("sock_send_length").exists(),
            "A's links until B's are up"
        );
        pins_b.retire_other_builds().expect("retire");
        assert!(
            !pins.link_path("sock_send_length").exists(),
            "A's links retired"
        );
        assert!(pins_b.map_path("FLOWS").exists());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// A map pin removed while no agent ran: the kept programs write to the old map, which
    /// no agent could read again; they are attached anew on the maps the pins give.
    #[test]
    fn a_map_pin_gone_while_no_agent_ran_has_the_programs_attached_anew() {
        let dir = temp_dir("map-gone");
        let (pins, _) = Pins::prepare(&dir, b"object A").expect("prepare");
        for map in PINNED_MAPS {
            std::fs::write(pins.map_path(map), "kept").expect("a pinned map");
        }
        std::fs::write(pins.link_path("sock_send_length"), "A's link").expect("a link");
        std::fs::remove_file(pins.map_path("FLOWS")).expect("rm FLOWS");
        let (_, reuse) = Pins::prepare(&dir, b"object A").expect("prepare again");
        assert_eq!(reuse, Reuse::Maps);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn another_layout_is_removed_before_loading() {
        let dir = temp_dir("layout");
        let old = dir.join("layout-1");
        std::fs::create_dir_all(old.join("links-00")).expect("old pins");
        std::fs::write(old.join("EGRESS"), "old map").expect("old map");
        let (_, reuse) = Pins::prepare(&dir, b"object").expect("prepare");
        assert_eq!(reuse, Reuse::Fresh);
        assert!(!old.exists(), "old layout removed");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

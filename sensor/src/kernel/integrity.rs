//! Tamper checks of the kernel side, every poll: is each attached probe's program still at
//! its hook, is each link and map still pinned where the agent pinned it? And repair: attach
//! again, pin again.
//!
//! The agent holds a descriptor of every link and map it made or adopted, so a check is a
//! handful of `bpf(2)` calls per object (about 130 a poll), and removing a pin by hand
//! (`rm /sys/fs/bpf/…`) destroys nothing while the agent runs: the object lives on in the
//! agent, which pins it again. What can stop a program is detaching its link
//! (`bpftool link detach`, `bpftool cgroup detach`): the agent then attaches it anew; bytes
//! sent between the detach and the next poll are not counted.

use std::{
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use super::{
    Sensor,
    pin::{PINNED_MAPS, Pins},
    probes::{self, Hook},
    sys,
};

/// A link the agent holds, of one attached probe.
pub(super) struct HeldLink {
    pub probe: &'static super::probes::Probe,
    pub fd: OwnedFd,
    pub id: u32,
    /// Where it is pinned; `None` for a cgroup link, which lives as long as the agent (this
    /// descriptor is its only holder: replaced by a repair, it goes).
    pub pin: Option<PathBuf>,
}

/// A map the agent holds, and where it is pinned.
pub(super) struct HeldMap {
    pub name: &'static str,
    pub fd: OwnedFd,
    pub id: u32,
    pub pin: PathBuf,
}

/// What a check found removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tampered {
    /// The probe's program no longer runs at its hook: its link was detached.
    Detached { probe: &'static str, link_id: u32 },
    /// A link's pin was removed (or replaced); the program still runs (the agent holds
    /// the link), but a restarted agent would have attached it anew.
    LinkUnpinned { probe: &'static str, path: PathBuf },
    /// A map's pin was removed (or replaced); counting goes on in the map the agent holds,
    /// but a restarted agent would have started its totals from zero.
    MapUnpinned { map: &'static str, path: PathBuf },
}

/// One finding, and what repairing it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub tampered: Tampered,
    /// `Err(why)` when the repair failed; it is tried again at the next poll.
    pub repair: Result<(), String>,
}

impl Tampered {
    /// The probe this finding stopped, if it stopped one.
    pub fn detached_probe(&self) -> Option<&'static str> {
        match self {
            Tampered::Detached { probe, .. } => Some(probe),
            _ => None,
        }
    }

    /// What was removed, as an alert names it: `probe sock:sock_send_length`,
    /// `pin of map FLOWS`.
    pub fn subject(&self) -> String {
        match self {
            Tampered::Detached { probe, .. } => format!("probe {probe}"),
            Tampered::LinkUnpinned { probe, .. } => format!("pin of the link of probe {probe}"),
            Tampered::MapUnpinned { map, .. } => format!("pin of map {map}"),
        }
    }

    /// The repair's label in `exfil_sensor_tamper_repairs_total{what}`.
    pub fn repair_label(&self) -> &'static str {
        match self {
            Tampered::Detached { .. } => "probe",
            Tampered::LinkUnpinned { .. } => "link_pin",
            Tampered::MapUnpinned { .. } => "map_pin",
        }
    }

    /// One line, for the alert's summary and the log.
    pub fn summary(&self) -> String {
        match self {
            Tampered::Detached { probe, link_id } => format!(
                "probe {probe} was detached from the kernel (link {link_id}): {} while it was \
                 detached were not counted",
                missed(probe)
            ),
            Tampered::LinkUnpinned { probe, path } => format!(
                "the pin of probe {probe}'s link was removed ({}); the probe kept counting",
                path.display()
            ),
            Tampered::MapUnpinned { map, path } => format!(
                "the pin of map {map} was removed ({}); counting went on in the map the agent \
                 holds",
                path.display()
            ),
        }
    }
}

impl Finding {
    /// A few sentences: what was seen, what the agent did, what it means for the counts.
    pub fn description(&self) -> String {
        let repair = match (&self.tampered, &self.repair) {
            (Tampered::Detached { probe, .. }, Ok(())) => format!(
                "The agent attached the program again (a new link). {} between the detach \
                 and the check (at most one poll interval) were not counted.",
                capitalized(missed(probe))
            ),
            (_, Ok(())) => "The agent pinned it again from the descriptor it holds: a \
                            restarted agent continues the same totals."
                .to_owned(),
            (_, Err(why)) => {
                format!("Repairing it failed ({why}); the agent tries again every poll interval.")
            }
        };
        format!(
            "{}. Someone with root access to the BPF file system or the bpf() system call \
             changed the agent's kernel side. {repair}",
            self.tampered.summary()
        )
    }
}

impl Sensor {
    /// Checks that every attached probe's program still runs at its hook and that every
    /// link and map is still pinned where the agent pinned it, and repairs what it finds:
    /// attaches a detached probe again, pins a link or map again from the descriptor the
    /// agent holds. A repair that fails is tried again at the next call.
    pub fn check_integrity(&mut self) -> Vec<Finding> {
        let mut findings = Vec::new();
        for index in 0..self.links.len() {
            let Some(tampered) = check_link(&self.links[index]) else {
                continue;
            };
            let repair = match &tampered {
                Tampered::LinkUnpinned { path, .. } => pin_over(self.links[index].fd.as_fd(), path),
                _ => probes::reattach(
                    &mut self.ebpf,
                    &self.pins,
                    self.cgroup2.as_deref(),
                    self.links[index].probe,
                )
                .map(|held| self.links[index] = held),
            };
            findings.push(Finding { tampered, repair });
        }
        for held in &self.maps {
            if let Some(tampered) = check_map(held) {
                let repair = pin_over(held.fd.as_fd(), &held.pin);
                findings.push(Finding { tampered, repair });
            }
        }
        findings
    }
}

/// Every pinned map, held by a descriptor of its own opened from its pin (just made, or
/// left by an earlier agent). One that cannot be opened is logged and not watched.
pub(super) fn hold_maps(pins: &Pins) -> Vec<HeldMap> {
    PINNED_MAPS
        .iter()
        .filter_map(|name| {
            let pin = pins.map_path(name);
            let held = sys::obj_get(&pin).and_then(|fd| {
                let id = sys::map_id(fd.as_fd())?;
                Ok(HeldMap {
                    name,
                    fd,
                    id,
                    pin: pin.clone(),
                })
            });
            held.map_err(|e| {
                tracing::warn!(map = name, pin = %pin.display(), error = %e, "map not watched");
            })
            .ok()
        })
        .collect()
}

/// What a probe counts, and so what goes uncounted while it is detached.
fn missed(probe: &str) -> &'static str {
    match probe {
        "sock:sock_send_length" => "bytes sent",
        "sock:sock_recv_length" => "bytes received",
        "sock:inet_sock_set_state" => "connections opened",
        "cgroup:dns_ingress" => "DNS answers",
        "cgroup:dns_connect4" | "cgroup:dns_connect6" => "the processes of DNS answers",
        _ => match probe.split(':').next().unwrap_or_default() {
            "sched" => "process starts and exits",
            "filemap" | "iomap" => "file reads",
            "ext4" | "xfs" => "file writes",
            "cgroup" => "destinations of unconnected UDP sends",
            _ => "events",
        },
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// Whether `held`'s program still runs at its hook, and its pin still names it.
pub(super) fn check_link(held: &HeldLink) -> Option<Tampered> {
    let probe = held.probe.probe;
    let detached = Tampered::Detached {
        probe,
        link_id: held.id,
    };
    match sys::link_info(held.fd.as_fd()) {
        // A held descriptor cannot be unreadable unless the link is defunct.
        Err(_) => return Some(detached),
        Ok(info) => {
            // A detached cgroup link has no cgroup (kernel/bpf/cgroup.c,
            // bpf_cgroup_link_fill_link_info). A raw tracepoint link cannot be detached (its
            // bpf_link_ops have no detach: BPF_LINK_DETACH answers EOPNOTSUPP); one whose
            // program reads as none is taken as detached all the same.
            let gone = match held.probe.hook {
                Hook::CgroupSockAddr | Hook::CgroupSkbIngress => info.cgroup_id == 0,
                Hook::RawTracepoint { .. } => info.prog_id == 0,
            };
            if gone {
                return Some(detached);
            }
        }
    }
    let path = held.pin.as_ref()?;
    if pinned_id(path, |fd| sys::link_info(fd).map(|i| i.id)) == Some(held.id) {
        return None;
    }
    Some(Tampered::LinkUnpinned {
        probe,
        path: path.clone(),
    })
}

/// Whether `held` is still pinned where the agent pinned it.
pub(super) fn check_map(held: &HeldMap) -> Option<Tampered> {
    if pinned_id(&held.pin, sys::map_id) == Some(held.id) {
        return None;
    }
    Some(Tampered::MapUnpinned {
        map: held.name,
        path: held.pin.clone(),
    })
}

/// The kernel id of what is pinned at `path`, if anything is.
fn pinned_id(
    path: &Path,
    id: impl Fn(std::os::fd::BorrowedFd<'_>) -> std::io::Result<u32>,
) -> Option<u32> {
    let fd = sys::obj_get(path).ok()?;
    id(fd.as_fd()).ok()
}

/// Pins `fd` at `path`, over whatever is there: pinned beside it first, then renamed over it
/// (bpffs refuses names with a dot, kernel/bpf/inode.c, bpf_lookup).
pub(super) fn pin_over(fd: std::os::fd::BorrowedFd<'_>, path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let mut staged = path.as_os_str().to_owned();
    staged.push("_new");
    let staged = PathBuf::from(staged);
    let _ = std::fs::remove_file(&staged);
    sys::obj_pin(fd, &staged).map_err(|e| format!("pinning {}: {e}", staged.display()))?;
    std::fs::rename(&staged, path).map_err(|e| {
        let _ = std::fs::remove_file(&staged);
        format!("pinning {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_probe_is_named_with_the_bytes_it_missed() {
        let finding = Finding {
            tampered: Tampered::Detached {
                probe: "sock:sock_send_length",
                link_id: 42,
            },
            repair: Ok(()),
        };
        assert_eq!(finding.tampered.subject(), "probe sock:sock_send_length");
        assert_eq!(
            finding.tampered.detached_probe(),
            Some("sock:sock_send_length")
        );
        assert_eq!(finding.tampered.repair_label(), "probe");
        assert!(
            finding
                .tampered
                .summary()
                .contains("bytes sent while it was detached were not counted"),
            "{}",
            finding.tampered.summary()
        );
        assert!(
            finding.description().contains(
                "were not counted. Someone with root access to the BPF file system or the \
                 bpf() system call changed the agent's kernel side. The agent attached the \
                 program again (a new link). Bytes sent between"
            ),
            "{}",
            finding.description()
        );
        let udp = Tampered::Detached {
            probe: "cgroup:sendmsg4",
            link_id: 7,
        };
        assert!(
            udp.summary()
                .contains("destinations of unconnected UDP sends while it was detached"),
            "{}",
            udp.summary()
        );
    }

    #[test]
    fn a_removed_map_pin_stops_no_probe() {
        let finding = Finding {
            tampered: Tampered::MapUnpinned {
                map: "FLOWS",
                path: PathBuf::from("/sys/fs/bpf/exfil-sensor/layout-3/FLOWS"),
            },
            repair: Err("pinning …: EPERM".to_owned()),
        };
        assert_eq!(finding.tampered.subject(), "pin of map FLOWS");
        assert_eq!(finding.tampered.detached_probe(), None);
        assert_eq!(finding.tampered.repair_label(), "map_pin");
        assert!(finding.description().contains("tries again every poll"));
    }
}

//! The probe table, and attaching each probe: raw tracepoints (pinned, so they keep counting
//! between agents) and cgroup hooks. A probe that cannot attach is skipped with its reason.

use std::{collections::HashMap, os::fd::AsFd as _, path::Path};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError,
        RawTracePoint, links::FdLink,
    },
};

use super::{btf::Btf, integrity::HeldLink, pin::Pins, sys};

/// Whether one probe is attached, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeState {
    Attached,
    Skipped(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeStatus {
    /// What users see in logs and in `exfil_sensor_probe_attached{probe}`: `sock:sock_send_length`.
    pub probe: &'static str,
    /// Without a required probe the sensor misses bytes; without an optional one it misses
    /// detail (where unconnected UDP went, who opened a connection), never volume.
    pub required: bool,
    pub state: ProbeState,
}

/// A probe: which program goes where.
pub struct Probe {
    pub probe: &'static str,
    pub program: &'static str,
    pub required: bool,
    pub hook: Hook,
}

pub enum Hook {
    /// A raw tracepoint, and the prototype (from BTF) the program was written for.
    RawTracepoint {
        name: &'static str,
        params: &'static [&'static str],
    },
    /// A cgroup sock_addr program (its attach type is in the object), on the cgroup2 root so
    /// that it sees every process, alongside other programs there.
    CgroupSockAddr,
    /// A cgroup skb ingress program, on the cgroup2 root likewise: it sees every packet a
    /// local socket receives.
    CgroupSkbIngress,
}

impl Probe {
    /// One of the DNS answer probes, which `dns.enabled = false` leaves unattached.
    pub fn is_dns(&self) -> bool {
        self.probe.starts_with("cgroup:dns_")
    }
}

/// TP_PROTO(struct sock *sk, int ret, int flags), after the context pointer; also
/// `inet_sock_set_state`'s (sk, oldstate, newstate) once `const` is set aside.
const SOCK_INT_INT: &[&str] = &["void *", "struct sock *", "int", "int"];

/// (struct address_space *mapping, pgoff_t index, pgoff_t last_index).
const MAPPING_RANGE: &[&str] = &[
    "void *",
    "struct address_space *",
    "long unsigned int",
    "long unsigned int",
];

/// (struct inode *inode, loff_t pos, unsigned int len, unsigned int copied): ext4's
/// write_end tracepoints.
const INODE_POS_LEN_COPIED: &[&str] = &[
    "void *",
    "struct inode *",
    "loff_t",
    "unsigned int",
    "unsigned int",
];

pub const PROBES: &[Probe] = &[
    Probe {
        probe: "sock:sock_send_length",
        program: "sock_send_length",
        required: true,
        hook: Hook::RawTracepoint {
            name: "sock_send_length",
            params: SOCK_INT_INT,
        },
    },
    Probe {
        probe: "sock:sock_recv_length",
        program: "sock_recv_length",
        required: false,
        hook: Hook::RawTracepoint {
            name: "sock_recv_length",
            params: SOCK_INT_INT,
        },
    },
    Probe {
        probe: "sock:inet_sock_set_state",
        program: "inet_sock_set_state",
        required: false,
        hook: Hook::RawTracepoint {
            name: "inet_sock_set_state",
            params: SOCK_INT_INT,
        },
    },
    Probe {
        probe: "sched:sched_process_exec",
        program: "sched_process_exec",
        required: false,
        hook: Hook::RawTracepoint {
            name: "sched_process_exec",
            params: &[
                "void *",
                "struct task_struct *",
                "pid_t",
                "struct linux_binprm *",
            ],
        },
    },
    Probe {
        probe: "sched:sched_process_fork",
        program: "sched_process_fork",
        required: false,
        hook: Hook::RawTracepoint {
            name: "sched_process_fork",
            params: &["void *", "struct task_struct *", "struct task_struct *"],
        },
    },
    Probe {
        probe: "sched:sched_process_exit",
        program: "sched_process_exit",
        required: false,
        hook: Hook::RawTracepoint {
            name: "sched_process_exit",
            params: &["void *", "struct task_struct *", "bool"],
        },
    },
    Probe {
        probe: "filemap:mm_filemap_get_pages",
        program: "mm_filemap_get_pages",
        required: false,
        hook: Hook::RawTracepoint {
            name: "mm_filemap_get_pages",
            params: MAPPING_RANGE,
        },
    },
    Probe {
        probe: "filemap:mm_filemap_map_pages",
        program: "mm_filemap_map_pages",
        required: false,
        hook: Hook::RawTracepoint {
            name: "mm_filemap_map_pages",
            params: MAPPING_RANGE,
        },
    },
    Probe {
        probe: "filemap:mm_filemap_fault",
        program: "mm_filemap_fault",
        required: false,
        hook: Hook::RawTracepoint {
            name: "mm_filemap_fault",
            params: &["void *", "struct address_space *", "long unsigned int"],
        },
    },
    Probe {
        probe: "iomap:iomap_dio_rw_begin",
        program: "iomap_dio_rw_begin",
        required: false,
        hook: Hook::RawTracepoint {
            name: "iomap_dio_rw_begin",
            params: &[
                "void *",
                "struct kiocb *",
                "struct iov_iter *",
                "unsigned int",
                "size_t",
            ],
        },
    },
    Probe {
        probe: "ext4:ext4_da_write_end",
        program: "ext4_da_write_end",
        required: false,
        hook: Hook::RawTracepoint {
            name: "ext4_da_write_end",
            params: INODE_POS_LEN_COPIED,
        },
    },
    Probe {
        probe: "ext4:ext4_write_end",
        program: "ext4_write_end",
        required: false,
        hook: Hook::RawTracepoint {
            name: "ext4_write_end",
            params: INODE_POS_LEN_COPIED,
        },
    },
    Probe {
        probe: "ext4:ext4_journalled_write_end",
        program: "ext4_journalled_write_end",
        required: false,
        hook: Hook::RawTracepoint {
            name: "ext4_journalled_write_end",
            params: INODE_POS_LEN_COPIED,
        },
    },
    Probe {
        probe: "xfs:xfs_file_buffered_write",
        program: "xfs_file_buffered_write",
        required: false,
        hook: Hook::RawTracepoint {
            name: "xfs_file_buffered_write",
            params: &["void *", "struct kiocb *", "struct iov_iter *"],
        },
    },
    Probe {
        probe: "cgroup:sendmsg4",
        program: "udp_sendmsg4",
        required: false,
        hook: Hook::CgroupSockAddr,
    },
    Probe {
        probe: "cgroup:sendmsg6",
        program: "udp_sendmsg6",
        required: false,
        hook: Hook::CgroupSockAddr,
    },
    Probe {
        probe: "cgroup:dns_ingress",
        program: "dns_ingress",
        required: false,
        hook: Hook::CgroupSkbIngress,
    },
    Probe {
        probe: "cgroup:dns_connect4",
        program: "dns_connect4",
        required: false,
        hook: Hook::CgroupSockAddr,
    },
    Probe {
        probe: "cgroup:dns_connect6",
        program: "dns_connect6",
        required: false,
        hook: Hook::CgroupSockAddr,
    },
];

/// The probes as users see them in logs, metrics and `kernel.disable_probes`.
pub fn probe_names() -> Vec<&'static str> {
    PROBES.iter().map(|p| p.probe).collect()
}

/// A probe by name, as the table spells it, and whether the sensor misses bytes (not just
/// detail) without it; `None` for no such probe.
pub fn probe_required(probe: &str) -> Option<(&'static str, bool)> {
    PROBES
        .iter()
        .find(|p| p.probe == probe)
        .map(|p| (p.probe, p.required))
}

/// What attaching needs to know about the host and the pins.
pub struct AttachContext<'a> {
    pub btf: &'a Btf,
    /// Prototypes of the raw tracepoints vmlinux's BTF lacks, found in modules' BTF.
    pub module_prototypes: &'a HashMap<&'static str, Vec<String>>,
    pub cgroup2: Option<&'a Path>,
    pub pins: &'a Pins,
    /// The pinned links were made by this very build: keep them instead of attaching again.
    pub keep_pinned_links: bool,
}

/// Attaches `probe`; its link, held by the agent for the tamper checks.
pub fn attach(
    ebpf: &mut Ebpf,
    cx: &AttachContext<'_>,
    probe: &'static Probe,
) -> Result<HeldLink, String> {
    match &probe.hook {
        Hook::RawTracepoint { name, params } => {
            attach_raw_tracepoint(ebpf, cx, probe, name, params)
        }
        Hook::CgroupSockAddr | Hook::CgroupSkbIngress => {
            attach_cgroup(ebpf, cx.cgroup2, cx.pins, probe)
        }
    }
}

/// Attaches `probe` again, after the tamper check found its link detached: a new link,
/// pinned where the old one was.
pub fn reattach(
    ebpf: &mut Ebpf,
    pins: &Pins,
    cgroup2: Option<&Path>,
    probe: &'static Probe,
) -> Result<HeldLink, String> {
    match &probe.hook {
        Hook::RawTracepoint { name, .. } => {
            attach_raw_link(ebpf, probe, name, &pins.link_path(probe.program))
        }
        Hook::CgroupSockAddr | Hook::CgroupSkbIngress => attach_cgroup(ebpf, cgroup2, pins, probe),
    }
}

/// The link pinned at `path`, held, if it is one still attached.
fn hold_pinned(probe: &'static Probe, path: &Path) -> Option<HeldLink> {
    let fd = sys::obj_get(path).ok()?;
    let info = sys::link_info(fd.as_fd()).ok()?;
    (info.prog_id != 0).then(|| HeldLink {
        probe,
        fd,
        id: info.id,
        pin: Some(path.to_owned()),
    })
}

fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    cx: &AttachContext<'_>,
    probe: &'static Probe,
    name: &str,
    params: &[&str],
) -> Result<HeldLink, String> {
    let found = cx
        .btf
        .raw_tracepoint_params(name)
        .or_else(|| cx.module_prototypes.get(name).cloned());
    check_prototype(name, found.as_deref(), params)?;
    let pin_path = cx.pins.link_path(probe.program);
    if cx.keep_pinned_links
        && let Some(held) = hold_pinned(probe, &pin_path)
    {
        // The same program, attached by an earlier agent of this build: it never stopped
        // counting, and attaching it again would count every byte twice.
        return Ok(held);
    }
    attach_raw_link(ebpf, probe, name, &pin_path)
}

/// Loads the program (once per agent), attaches it to raw tracepoint `name`, pins the link
/// at `pin_path` and holds it.
fn attach_raw_link(
    ebpf: &mut Ebpf,
    probe: &'static Probe,
    name: &str,
    pin_path: &Path,
) -> Result<HeldLink, String> {
    let program = program(ebpf, probe)?;
    let raw: &mut RawTracePoint = program
        .try_into()
        .map_err(|e: ProgramError| e.to_string())?;
    if raw.fd().is_err() {
        raw.load().map_err(|e| refused(probe, &e))?;
    }
    let link_id = raw
        .attach(name)
        .map_err(|e| format!("attaching to {name}: {}", crate::error_chain(&e)))?;
    let link: FdLink = raw
        .take_link(link_id)
        .map_err(|e| crate::error_chain(&e))?
        .into();
    pin_replacing(link, pin_path)?;
    hold_pinned(probe, pin_path).ok_or_else(|| {
        format!(
            "the link pinned at {} could not be opened again",
            pin_path.display()
        )
    })
}

/// Whether this kernel has tracepoint `name` with the prototype the program was written for:
/// `found` is its parameters from BTF, `None` when no BTF (vmlinux's or a module's) has it.
fn check_prototype(name: &str, found: Option<&[String]>, params: &[&str]) -> Result<(), String> {
    match found {
        None => Err(format!(
            "the kernel has no tracepoint {name} (not in the BTF of vmlinux or of any loaded \
             module)"
        )),
        Some(found) if found != params => Err(format!(
            "tracepoint {name} takes ({}), the program expects ({})",
            found.join(", "),
            params.join(", ")
        )),
        Some(_) => Ok(()),
    }
}

/// A probe the config disables: not attached, and an earlier agent's pinned link for it is
/// removed, so that it stops counting too. Returns the reason the probe is skipped.
pub fn disable(cx: &AttachContext<'_>, probe: &Probe) -> String {
    let pin = cx.pins.link_path(probe.program);
    match std::fs::remove_file(&pin) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => format!(
            "disabled by kernel.disable_probes, but its earlier link {} stays: {e}",
            pin.display()
        ),
        _ => "disabled by kernel.disable_probes".to_owned(),
    }
}

/// Pins a new link where an older build's may be: the new one is pinned beside it first and
/// then renamed over it, so that the tracepoint is never left without a program (for a moment
/// both count: over, never under).
fn pin_replacing(link: FdLink, path: &Path) -> Result<(), String> {
    // bpffs refuses names with a dot (kernel/bpf/inode.c, bpf_lookup).
    let mut staged = path.as_os_str().to_owned();
    staged.push("_new");
    let staged = std::path::PathBuf::from(staged);
    let _ = std::fs::remove_file(&staged);
    let pinned = link
        .pin(&staged)
        .map_err(|e| format!("pinning {}: {}", staged.display(), crate::error_chain(&e)))?;
    std::fs::rename(&staged, path).map_err(|e| format!("pinning {}: {e}", path.display()))?;
    // The pin now holds the link; this process's handle may go.
    drop(pinned);
    Ok(())
}

/// The prototypes of the probes' raw tracepoints that vmlinux's BTF lacks but a loaded
/// module's has: ext4 and xfs are modules on many distributions, and a module's tracepoint
/// types are in its own split BTF, `/sys/kernel/btf/<module>` beside `vmlinux`. The kernel
/// attaches raw tracepoints of modules by name like built-in ones. A module loaded after the
/// agent started is not seen until the next start.
pub fn module_prototypes(btf: &mut Btf, vmlinux: &Path) -> HashMap<&'static str, Vec<String>> {
    let missing: Vec<&'static str> = PROBES
        .iter()
        .filter_map(|probe| match probe.hook {
            Hook::RawTracepoint { name, .. } => Some(name),
            Hook::CgroupSockAddr | Hook::CgroupSkbIngress => None,
        })
        .filter(|name| btf.raw_tracepoint_params(name).is_none())
        .collect();
    let mut found = HashMap::new();
    let Some(dir) = vmlinux.parent().filter(|_| !missing.is_empty()) else {
        return found;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        if path == vmlinux || found.len() == missing.len() {
            continue;
        }
        let Ok(data) = std::fs::read(&path) else {
            continue;
        };
        for name in &missing {
            match btf.module_raw_tracepoint_params(&data, name) {
                Ok(Some(params)) => {
                    found.insert(*name, params);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(btf = %path.display(), error = %e, "unreadable module BTF");
                    break;
                }
            }
        }
    }
    found
}

fn attach_cgroup(
    ebpf: &mut Ebpf,
    cgroup2: Option<&Path>,
    pins: &Pins,
    probe: &'static Probe,
) -> Result<HeldLink, String> {
    let root = cgroup2.ok_or("no cgroup2 hierarchy is mounted (see /proc/mounts)")?;
    let dir = std::fs::File::open(root)
        .map_err(|e| format!("opening the cgroup2 root {}: {e}", root.display()))?;
    let attach_error = |e: ProgramError| {
        format!(
            "attaching to the cgroup2 root {}: {}",
            root.display(),
            crate::error_chain(&e)
        )
    };
    let no_link = |e: aya::programs::links::LinkError| {
        format!("attached without a BPF link: {}", crate::error_chain(&e))
    };
    let program = program(ebpf, probe)?;
    // A BPF link (kernel ≥ 5.7) always runs alongside other programs on the cgroup; the kernel
    // refuses attach flags on link creation, so the mode must be `Single`. It is not left
    // pinned: it lives as long as the agent.
    let link: FdLink = if matches!(probe.hook, Hook::CgroupSkbIngress) {
        let skb: &mut CgroupSkb = program
            .try_into()
            .map_err(|e: ProgramError| e.to_string())?;
        if skb.fd().is_err() {
            skb.load().map_err(|e| refused(probe, &e))?;
        }
        let link_id = skb
            .attach(&dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
            .map_err(attach_error)?;
        skb.take_link(link_id)
            .map_err(|e| crate::error_chain(&e))?
            .try_into()
            .map_err(no_link)?
    } else {
        let sock_addr: &mut CgroupSockAddr = program
            .try_into()
            .map_err(|e: ProgramError| e.to_string())?;
        if sock_addr.fd().is_err() {
            sock_addr.load().map_err(|e| refused(probe, &e))?;
        }
        let link_id = sock_addr
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(attach_error)?;
        sock_addr
            .take_link(link_id)
            .map_err(|e| crate::error_chain(&e))?
            .try_into()
            .map_err(no_link)?
    };
    // aya gives no descriptor of a link: pinned for a moment, opened by its pin (which needs
    // no CAP_SYS_ADMIN, as looking links up by id would), unpinned.
    let moment = pins.link_path(&format!("{}_held", probe.program));
    let _ = std::fs::remove_file(&moment);
    let pinned = link
        .pin(&moment)
        .map_err(|e| format!("pinning {}: {}", moment.display(), crate::error_chain(&e)))?;
    let opened = sys::obj_get(&moment);
    let unpinned = pinned.unpin();
    let fd = opened.map_err(|e| format!("opening {}: {e}", moment.display()))?;
    unpinned.map_err(|e| format!("unpinning {}: {e}", moment.display()))?;
    let info = sys::link_info(fd.as_fd())
        .map_err(|e| format!("reading the link of {}: {e}", probe.program))?;
    Ok(HeldLink {
        probe,
        fd,
        id: info.id,
        pin: None,
    })
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    probe: &Probe,
) -> Result<&'a mut aya::programs::Program, String> {
    ebpf.program_mut(probe.program)
        .ok_or_else(|| format!("program {} is not in the eBPF object", probe.program))
}

fn refused(probe: &Probe, e: &ProgramError) -> String {
    format!(
        "the verifier refused {}: {}",
        probe.program,
        crate::error_chain(e)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracepoint_this_kernel_lacks_or_changed_is_named() {
        let params = ["void *", "struct address_space *", "long unsigned int"];
        assert_eq!(
            check_prototype("mm_filemap_fault", None, &params),
            Err(
                "the kernel has no tracepoint mm_filemap_fault (not in the BTF of vmlinux or \
                 of any loaded module)"
                    .to_owned()
            )
        );
        let older: Vec<String> = ["void *", "struct page *"].map(String::from).to_vec();
        assert_eq!(
            check_prototype("mm_filemap_fault", Some(&older), &params),
            Err(
                "tracepoint mm_filemap_fault takes (void *, struct page *), the program \
                 expects (void *, struct address_space *, long unsigned int)"
                    .to_owned()
            )
        );
        let same: Vec<String> = params.map(String::from).to_vec();
        assert_eq!(
            check_prototype("mm_filemap_fault", Some(&same), &params),
            Ok(())
        );
    }
}

//! The kernel edge: load the eBPF object with this kernel's layout, attach the probes, and
//! read the sums out of the maps. Nothing above this module touches BPF.

pub mod btf;
pub mod host;

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapData, MapError, PerCpuArray, PerCpuHashMap},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, RawTracePoint},
};
use sensor_common::{
    FlowCounters, FlowKey, KernelLayout, MAP_COUNT, PROG_COUNT, PortRange, SOCK_HEAD_LEN,
};
use thiserror::Error;

use self::btf::Btf;

/// The eBPF object, built by `build.rs` for the BPF target.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf"));

#[derive(Debug, Error)]
pub enum KernelError {
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error("BTF {path}: {cause}")]
    AyaBtf { path: String, cause: aya::BtfError },
    #[error("loading the eBPF object into the kernel failed: {0}")]
    Load(#[from] EbpfError),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("reading map {map}: {cause}")]
    Map { map: &'static str, cause: MapError },
}

/// Sizes and switches the agent's config gives the kernel side.
#[derive(Debug, Clone)]
pub struct KernelOptions {
    /// The kernel's BTF (`/sys/kernel/btf/vmlinux`, or a separate file).
    pub btf: PathBuf,
    pub flow_map_entries: u32,
}

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
    /// detail (where unconnected UDP went), never volume.
    pub required: bool,
    pub state: ProbeState,
}

/// A probe: which program goes where.
struct Probe {
    probe: &'static str,
    program: &'static str,
    required: bool,
    hook: Hook,
}

enum Hook {
    /// A raw tracepoint, and the prototype (from BTF) the program was written for.
    RawTracepoint {
        name: &'static str,
        params: &'static [&'static str],
    },
    /// A cgroup sock_addr program (its attach type is in the object), on the cgroup2 root so
    /// that it sees every process, alongside other programs there.
    CgroupSockAddr,
}

/// TP_PROTO(struct sock *sk, int ret, int flags), after the context pointer; also
/// `inet_sock_set_state`'s (sk, oldstate, newstate) once `const` is set aside.
const SOCK_INT_INT: &[&str] = &["void *", "struct sock *", "int", "int"];

const PROBES: &[Probe] = &[
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
];

/// What one poll reads out of the kernel: running totals since the maps were created.
#[derive(Debug, Default, Clone)]
pub struct KernelSums {
    pub flows: Vec<(FlowKey, FlowCounters)>,
    /// Per process, bytes that found no room in the flow map.
    pub flow_overflow: Vec<(u32, FlowCounters)>,
    /// Bytes that found no room in the per-process overflow map either.
    pub unattributed: FlowCounters,
    /// Per program, in `sensor_common::PROG_NAMES` order.
    pub errors: [u64; PROG_COUNT as usize],
    /// Per map, in `sensor_common::MAP_NAMES` order.
    pub drops: [u64; MAP_COUNT as usize],
}

/// The loaded programs and their maps. Dropping it detaches everything.
pub struct Sensor {
    ebpf: Ebpf,
    probes: Vec<ProbeStatus>,
}

impl Sensor {
    /// Checks the host, reads this kernel's layout, loads the object and attaches every probe
    /// it can. A probe that cannot attach is recorded as skipped, never fatal.
    pub fn load(options: &KernelOptions) -> Result<Self, KernelError> {
        host::check_privileges()?;
        host::ensure_mounted("bpf", Path::new("/sys/fs/bpf"))?;
        let cgroup2 = host::cgroup2_root();
        let btf = Btf::from_file(&options.btf)?;
        // aya relocates against the same BTF (CO-RE); parse failures were caught just above.
        let aya_btf =
            aya::Btf::parse_file(&options.btf, aya::Endianness::default()).map_err(|cause| {
                KernelError::AyaBtf {
                    path: options.btf.display().to_string(),
                    cause,
                }
            })?;
        let (layout, layout_problem) = match kernel_layout(&btf) {
            Ok(layout) => (layout, None),
            Err(reason) => (KernelLayout::default(), Some(reason)),
        };
        let own_tgid = std::process::id();
        let ephemeral = ephemeral_ports();
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&aya_btf))
            .override_global("OWN_TGID", &own_tgid, true)
            .override_global("LAYOUT", &layout, true)
            .override_global("EPHEMERAL_PORTS", &ephemeral, true)
            .map_max_entries("FLOWS", options.flow_map_entries)
            // An overflow slot per process that could be sending: a sixteenth of the flows,
            // at least 1024.
            .map_max_entries("FLOW_OVERFLOW", (options.flow_map_entries / 16).max(1024))
            .load(EBPF_OBJECT)?;
        let probes = PROBES
            .iter()
            .map(|probe| ProbeStatus {
                probe: probe.probe,
                required: probe.required,
                state: match &layout_problem {
                    Some(reason) => ProbeState::Skipped(reason.clone()),
                    None => match attach(&mut ebpf, &btf, cgroup2.as_deref(), probe) {
                        Ok(()) => ProbeState::Attached,
                        Err(reason) => ProbeState::Skipped(reason),
                    },
                },
            })
            .collect();
        Ok(Self { ebpf, probes })
    }

    /// The compatibility table: each probe, attached or skipped with the reason.
    pub fn probes(&self) -> &[ProbeStatus] {
        &self.probes
    }

    /// Reads every running total, summing the per-CPU values.
    pub fn read(&self) -> Result<KernelSums, KernelError> {
        let flows: PerCpuHashMap<&MapData, FlowKey, FlowCounters> =
            PerCpuHashMap::try_from(self.map("FLOWS")?).map_err(map_err("FLOWS"))?;
        let mut sums = KernelSums::default();
        for entry in flows.iter() {
            let (key, per_cpu) = entry.map_err(map_err("FLOWS"))?;
            sums.flows.push((key, sum_counters(&per_cpu)));
        }
        let overflow: PerCpuHashMap<&MapData, u32, FlowCounters> =
            PerCpuHashMap::try_from(self.map("FLOW_OVERFLOW")?)
                .map_err(map_err("FLOW_OVERFLOW"))?;
        for entry in overflow.iter() {
            let (tgid, per_cpu) = entry.map_err(map_err("FLOW_OVERFLOW"))?;
            sums.flow_overflow.push((tgid, sum_counters(&per_cpu)));
        }
        let unattributed: PerCpuArray<&MapData, FlowCounters> =
            PerCpuArray::try_from(self.map("UNATTRIBUTED")?).map_err(map_err("UNATTRIBUTED"))?;
        let slot = unattributed.get(&0, 0).map_err(map_err("UNATTRIBUTED"))?;
        sums.unattributed = sum_counters(&slot);
        read_counter_array(
            self.map("KERNEL_ERRORS")?,
            "KERNEL_ERRORS",
            &mut sums.errors,
        )?;
        read_counter_array(self.map("KERNEL_DROPS")?, "KERNEL_DROPS", &mut sums.drops)?;
        Ok(sums)
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, KernelError> {
        self.ebpf.map(name).ok_or(KernelError::MissingMap(name))
    }
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> KernelError {
    move |cause| KernelError::Map { map, cause }
}

fn sum_counters(per_cpu: &[FlowCounters]) -> FlowCounters {
    per_cpu
        .iter()
        .fold(FlowCounters::default(), |acc, c| FlowCounters {
            sent: acc.sent + c.sent,
            sends: acc.sends + c.sends,
            received: acc.received + c.received,
            recvs: acc.recvs + c.recvs,
        })
}

/// `net.ipv4.ip_local_port_range` (it also governs IPv6); the kernel's default when unreadable.
fn ephemeral_ports() -> PortRange {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";
    let parsed = std::fs::read_to_string(PATH).ok().and_then(|text| {
        let mut ports = text.split_whitespace().map(str::parse::<u16>);
        Some(PortRange {
            low: ports.next()?.ok()?,
            high: ports.next()?.ok()?,
        })
    });
    parsed.unwrap_or_else(|| {
        tracing::warn!(
            path = PATH,
            "unreadable; assuming the kernel default 32768-60999"
        );
        PortRange {
            low: 32_768,
            high: 60_999,
        }
    })
}

fn read_counter_array(
    map: &aya::maps::Map,
    name: &'static str,
    out: &mut [u64],
) -> Result<(), KernelError> {
    let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(map_err(name))?;
    for (index, slot) in (0u32..).zip(out.iter_mut()) {
        *slot = array.get(&index, 0).map_err(map_err(name))?.iter().sum();
    }
    Ok(())
}

/// Field offsets of this kernel, from BTF. An error names the type that lacked a field.
fn kernel_layout(btf: &Btf) -> Result<KernelLayout, String> {
    let offset = |strukt: &str, member: &str| -> Result<u16, String> {
        let offset = btf
            .member_offset(strukt, member)
            .map_err(|e| e.to_string())?;
        u16::try_from(offset).map_err(|_| format!("{strukt}.{member} at {offset} is too far"))
    };
    let layout = KernelLayout {
        skc_daddr: offset("sock_common", "skc_daddr")?,
        skc_dport: offset("sock_common", "skc_dport")?,
        skc_num: offset("sock_common", "skc_num")?,
        skc_family: offset("sock_common", "skc_family")?,
        skc_v6_daddr: offset("sock_common", "skc_v6_daddr")?,
        sk_protocol: offset("sock", "sk_protocol")?,
        _pad: [0; 2],
    };
    for (field, at, size) in [
        ("skc_daddr", layout.skc_daddr, 4),
        ("skc_dport", layout.skc_dport, 2),
        ("skc_num", layout.skc_num, 2),
        ("skc_family", layout.skc_family, 2),
    ] {
        if at + size > SOCK_HEAD_LEN {
            return Err(format!(
                "sock_common.{field} at {at} lies outside the first {SOCK_HEAD_LEN} bytes the \
                 send program reads"
            ));
        }
    }
    Ok(layout)
}

fn attach(ebpf: &mut Ebpf, btf: &Btf, cgroup2: Option<&Path>, probe: &Probe) -> Result<(), String> {
    let program = ebpf
        .program_mut(probe.program)
        .ok_or_else(|| format!("program {} is not in the eBPF object", probe.program))?;
    let refused =
        |e: ProgramError| format!("the verifier refused {}: {}", probe.program, chain(&e));
    match &probe.hook {
        Hook::RawTracepoint { name, params } => {
            match btf.raw_tracepoint_params(name) {
                None => return Err(format!("the kernel has no tracepoint {name}")),
                Some(found) if found != *params => {
                    return Err(format!(
                        "tracepoint {name} takes ({}), the program expects ({})",
                        found.join(", "),
                        params.join(", ")
                    ));
                }
                Some(_) => {}
            }
            let raw: &mut RawTracePoint = program
                .try_into()
                .map_err(|e: ProgramError| e.to_string())?;
            raw.load().map_err(refused)?;
            raw.attach(name)
                .map_err(|e| format!("attaching to {name}: {}", chain(&e)))?;
        }
        Hook::CgroupSockAddr => {
            let root = cgroup2.ok_or("no cgroup2 hierarchy is mounted (see /proc/mounts)")?;
            let dir = std::fs::File::open(root)
                .map_err(|e| format!("opening the cgroup2 root {}: {e}", root.display()))?;
            let sock_addr: &mut CgroupSockAddr = program
                .try_into()
                .map_err(|e: ProgramError| e.to_string())?;
            sock_addr.load().map_err(refused)?;
            // A BPF link (kernel ≥ 5.7) always runs alongside other programs on the cgroup;
            // the kernel refuses attach flags on link creation, so the mode must be `Single`.
            sock_addr
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|e| {
                    format!(
                        "attaching to the cgroup2 root {}: {}",
                        root.display(),
                        chain(&e)
                    )
                })?;
        }
    }
    Ok(())
}

/// An error and its causes on one line: aya's errors keep the errno in their source.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

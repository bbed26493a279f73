//! The kernel edge: load the eBPF object with this kernel's layout, attach the probes, and
//! read the sums out of the maps. Nothing above this module touches BPF.

mod announce;
mod batch;
pub mod btf;
mod dns;
pub mod host;
mod integrity;
mod layout;
pub mod path_ring;
mod pin;
mod probes;
mod sys;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
};
use sensor_common::{
    FileKey, FilePathEvent, FileRead, FileWrite, FlowCounters, FlowKey, KernelLayout, MAP_COUNT,
    PROG_COUNT, ProcessEvent, dns::DNS_STAT_COUNT,
};
use thiserror::Error;

use self::{
    announce::announce_agent,
    btf::Btf,
    integrity::{HeldLink, HeldMap},
    pin::{PINNED_MAPS, Pins, Reuse},
    probes::{AttachContext, PROBES},
};
pub use self::{
    integrity::{Finding, Tampered},
    probes::{ProbeState, ProbeStatus},
};

/// For the docs' tests: every map the programs write.
#[cfg(test)]
pub(crate) fn pinned_maps() -> &'static [&'static str] {
    PINNED_MAPS
}

pub use self::probes::{probe_names, probe_required};

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
    #[error(transparent)]
    Pin(#[from] pin::PinError),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("reading map {map}: {cause}")]
    Map { map: &'static str, cause: MapError },
    #[error("reading map {map} in batches: {cause}")]
    Batch {
        map: &'static str,
        cause: std::io::Error,
    },
    #[error("counting the possible CPUs ({what}): {cause}")]
    Cpus {
        what: &'static str,
        cause: std::io::Error,
    },
}

/// Sizes and switches the agent's config gives the kernel side.
#[derive(Debug, Clone)]
pub struct KernelOptions {
    /// The kernel's BTF (`/sys/kernel/btf/vmlinux`, or a separate file).
    pub btf: PathBuf,
    pub flow_map_entries: u32,
    pub file_map_entries: u32,
    /// Where maps and links are pinned in bpffs, to outlive the agent.
    pub pin_dir: PathBuf,
    /// Probes not to attach (`kernel.disable_probes`), by their names in [`probe_names`].
    pub disabled_probes: Vec<&'static str>,
    /// Watch DNS answers (`dns.enabled`): without it the DNS probes are not attached.
    pub dns: bool,
}

/// What one poll reads out of the kernel: running totals since the maps were created.
#[derive(Debug, Default, Clone)]
pub struct KernelSums {
    pub flows: Vec<(FlowKey, FlowCounters)>,
    /// Per process, bytes that found no room in the flow map.
    pub flow_overflow: Vec<(u32, FlowCounters)>,
    /// Bytes that found no room in the per-process overflow map either.
    pub unattributed: FlowCounters,
    /// Per (process, file): bytes read.
    pub file_reads: Vec<(FileKey, FileRead)>,
    /// Per process, bytes read while the file map was full.
    pub file_overflow: Vec<(u32, u64)>,
    /// Per (process, file): bytes written (summed over CPUs).
    pub file_writes: Vec<(FileKey, FileWrite)>,
    /// Per process, bytes written while the file-write map was full.
    pub file_write_overflow: Vec<(u32, u64)>,
    /// Per program, in `sensor_common::PROG_NAMES` order.
    pub errors: [u64; PROG_COUNT as usize],
    /// Per map, in `sensor_common::MAP_NAMES` order.
    pub drops: [u64; MAP_COUNT as usize],
    /// DNS responses sent, then refused per reason, in `sensor_common::dns::DNS_STAT_NAMES`
    /// order.
    pub dns: [u64; DNS_STAT_COUNT as usize],
}

/// Keys of processes that exited, to delete once their last totals are read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeadKeys {
    pub flows: Vec<FlowKey>,
    pub flow_overflow: Vec<u32>,
    pub files: Vec<FileKey>,
    pub file_overflow: Vec<u32>,
    pub file_writes: Vec<FileKey>,
    pub file_write_overflow: Vec<u32>,
}

impl DeadKeys {
    /// The keys in `sums` that belong to a process in `exited`.
    pub fn of(sums: &KernelSums, exited: &HashSet<u32>) -> Self {
        if exited.is_empty() {
            return Self::default();
        }
        Self {
            flows: sums
                .flows
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| exited.contains(&k.tgid))
                .collect(),
            flow_overflow: sums
                .flow_overflow
                .iter()
                .map(|(t, _)| *t)
                .filter(|t| exited.contains(t))
                .collect(),
            files: sums
                .file_reads
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| exited.contains(&k.tgid))
                .collect(),
            file_overflow: sums
                .file_overflow
                .iter()
                .map(|(t, _)| *t)
                .filter(|t| exited.contains(t))
                .collect(),
            file_writes: sums
                .file_writes
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| exited.contains(&k.tgid))
                .collect(),
            file_write_overflow: sums
                .file_write_overflow
                .iter()
                .map(|(t, _)| *t)
                .filter(|t| exited.contains(t))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
            && self.flow_overflow.is_empty()
            && self.files.is_empty()
            && self.file_overflow.is_empty()
            && self.file_writes.is_empty()
            && self.file_write_overflow.is_empty()
    }
}

/// The loaded programs and their maps. Dropping it detaches everything.
pub struct Sensor {
    ebpf: Ebpf,
    probes: Vec<ProbeStatus>,
    process_events: RingBuf<MapData>,
    dns_events: RingBuf<MapData>,
    /// Until [`Sensor::path_ring`] hands it to its draining thread.
    file_paths: Option<RingBuf<MapData>>,
    /// Possible CPUs: the number of values per key of a per-CPU map.
    cpus: usize,
    /// The maps were left pinned by an earlier agent: their totals predate this one.
    reused_maps: bool,
    /// What the tamper checks watch, and what repairs need.
    pins: Pins,
    cgroup2: Option<PathBuf>,
    links: Vec<HeldLink>,
    maps: Vec<HeldMap>,
}

impl Sensor {
    /// Checks the host, reads this kernel's layout, loads the object and attaches every probe
    /// it can. A probe that cannot attach is recorded as skipped, never fatal.
    pub fn load(options: &KernelOptions) -> Result<Self, KernelError> {
        host::check_privileges()?;
        host::ensure_mounted("bpf", Path::new("/sys/fs/bpf"))?;
        let cgroup2 = host::cgroup2_root();
        let mut btf = Btf::from_file(&options.btf)?;
        let module_prototypes = probes::module_prototypes(&mut btf, &options.btf);
        // aya relocates against the same BTF (CO-RE); parse failures were caught just above.
        let aya_btf =
            aya::Btf::parse_file(&options.btf, aya::Endianness::default()).map_err(|cause| {
                KernelError::AyaBtf {
                    path: options.btf.display().to_string(),
                    cause,
                }
            })?;
        let (layout, layout_problem) = match layout::kernel_layout(&btf) {
            Ok(layout) => (layout, None),
            Err(reason) => (KernelLayout::default(), Some(reason)),
        };
        let (pins, reuse) = Pins::prepare(&options.pin_dir, EBPF_OBJECT)?;
        let ephemeral = layout::ephemeral_ports();
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&aya_btf))
            .override_global("LAYOUT", &layout, true)
            .override_global("EPHEMERAL_PORTS", &ephemeral, true)
            .map_max_entries("FLOWS", options.flow_map_entries)
            // An overflow slot per process that could be sending: a sixteenth of the flows,
            // at least 1024.
            .map_max_entries("FLOW_OVERFLOW", (options.flow_map_entries / 16).max(1024))
            .map_max_entries("FILE_READS", options.file_map_entries)
            .map_max_entries("FILE_OVERFLOW", (options.file_map_entries / 16).max(1024))
            .map_max_entries("FILE_WRITES", options.file_map_entries)
            .map_max_entries(
                "FILE_WRITE_OVERFLOW",
                (options.file_map_entries / 16).max(1024),
            );
        let map_paths: Vec<(&str, PathBuf)> =
            PINNED_MAPS.iter().map(|m| (*m, pins.map_path(m))).collect();
        for (map, path) in &map_paths {
            loader.map_pin_path(map, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        // Before any program runs (or keeps running) under this agent: it must not count itself.
        announce_agent(&mut ebpf)?;
        if reuse != Reuse::Fresh {
            tracing::info!(pins = %options.pin_dir.display(), "continuing the pinned totals");
        }
        let cx = AttachContext {
            btf: &btf,
            module_prototypes: &module_prototypes,
            cgroup2: cgroup2.as_deref(),
            pins: &pins,
            keep_pinned_links: reuse == Reuse::MapsAndLinks,
        };
        let mut links = Vec::new();
        let probes = PROBES
            .iter()
            .map(|probe| ProbeStatus {
                probe: probe.probe,
                required: probe.required,
                state: match &layout_problem {
                    Some(reason) => ProbeState::Skipped(reason.clone()),
                    None if options.disabled_probes.contains(&probe.probe) => {
                        ProbeState::Skipped(probes::disable(&cx, probe))
                    }
                    None if probe.is_dns() && !options.dns => {
                        ProbeState::Skipped("disabled by dns.enabled = false".to_owned())
                    }
                    None => match probes::attach(&mut ebpf, &cx, probe) {
                        Ok(held) => {
                            links.push(held);
                            ProbeState::Attached
                        }
                        Err(reason) => ProbeState::Skipped(reason),
                    },
                },
            })
            .collect();
        pins.retire_other_builds()?;
        let maps = integrity::hold_maps(&pins);
        let file_paths = take_ring(&mut ebpf, "FILE_PATHS")?;
        let process_events = take_ring(&mut ebpf, "PROCESS_EVENTS")?;
        let dns_events = take_ring(&mut ebpf, "DNS_EVENTS")?;
        let cpus =
            aya::util::nr_cpus().map_err(|(what, cause)| KernelError::Cpus { what, cause })?;
        Ok(Self {
            ebpf,
            probes,
            process_events,
            dns_events,
            file_paths: Some(file_paths),
            cpus,
            reused_maps: reuse != Reuse::Fresh,
            pins,
            cgroup2,
            links,
            maps,
        })
    }

    /// Whether the totals were carried over from an earlier agent's pinned maps.
    pub fn reused_maps(&self) -> bool {
        self.reused_maps
    }

    /// Deletes the keys of processes that exited from the flow and file maps, after their
    /// last totals were read: they cannot count again, and the maps stay free for the living.
    /// Returns how many keys went.
    pub fn forget(&mut self, dead: &DeadKeys) -> Result<usize, KernelError> {
        let mut removed = 0;
        if !dead.flows.is_empty() {
            let mut flows: PerCpuHashMap<&mut MapData, FlowKey, FlowCounters> =
                PerCpuHashMap::try_from(self.map_mut("FLOWS")?).map_err(map_err("FLOWS"))?;
            removed += dead
                .flows
                .iter()
                .filter(|k| flows.remove(k).is_ok())
                .count();
        }
        if !dead.flow_overflow.is_empty() {
            let mut overflow: PerCpuHashMap<&mut MapData, u32, FlowCounters> =
                PerCpuHashMap::try_from(self.map_mut("FLOW_OVERFLOW")?)
                    .map_err(map_err("FLOW_OVERFLOW"))?;
            removed += dead
                .flow_overflow
                .iter()
                .filter(|t| overflow.remove(t).is_ok())
                .count();
        }
        if !dead.files.is_empty() {
            let mut files: HashMap<&mut MapData, FileKey, FileRead> =
                HashMap::try_from(self.map_mut("FILE_READS")?).map_err(map_err("FILE_READS"))?;
            removed += dead
                .files
                .iter()
                .filter(|k| files.remove(k).is_ok())
                .count();
        }
        removed += self.forget_overflow("FILE_OVERFLOW", &dead.file_overflow)?;
        if !dead.file_writes.is_empty() {
            let mut writes: PerCpuHashMap<&mut MapData, FileKey, FileWrite> =
                PerCpuHashMap::try_from(self.map_mut("FILE_WRITES")?)
                    .map_err(map_err("FILE_WRITES"))?;
            removed += dead
                .file_writes
                .iter()
                .filter(|k| writes.remove(k).is_ok())
                .count();
        }
        removed += self.forget_overflow("FILE_WRITE_OVERFLOW", &dead.file_write_overflow)?;
        Ok(removed)
    }

    /// Deletes `tgids` from a per-process byte overflow map; how many went.
    fn forget_overflow(&mut self, name: &'static str, tgids: &[u32]) -> Result<usize, KernelError> {
        if tgids.is_empty() {
            return Ok(0);
        }
        let mut overflow: PerCpuHashMap<&mut MapData, u32, u64> =
            PerCpuHashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        Ok(tgids.iter().filter(|t| overflow.remove(t).is_ok()).count())
    }

    /// The compatibility table: each probe, attached or skipped with the reason.
    pub fn probes(&self) -> &[ProbeStatus] {
        &self.probes
    }

    /// Reads every running total, summing the per-CPU values.
    pub fn read(&self) -> Result<KernelSums, KernelError> {
        let mut sums = KernelSums::default();
        if let Some(flows) = self.batched("FLOWS", self.cpus, sum_counters)? {
            sums.flows = flows;
        } else {
            let flows: PerCpuHashMap<&MapData, FlowKey, FlowCounters> =
                PerCpuHashMap::try_from(self.map("FLOWS")?).map_err(map_err("FLOWS"))?;
            for entry in flows.iter() {
                let (key, per_cpu) = entry.map_err(map_err("FLOWS"))?;
                sums.flows.push((key, sum_counters(&per_cpu)));
            }
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
        read_counter_array(self.map("DNS_STATS")?, "DNS_STATS", &mut sums.dns)?;
        if let Some(reads) = self.batched("FILE_READS", 1, |one: &[FileRead]| one[0])? {
            sums.file_reads = reads;
        } else {
            let files: HashMap<&MapData, FileKey, FileRead> =
                HashMap::try_from(self.map("FILE_READS")?).map_err(map_err("FILE_READS"))?;
            for entry in files.iter() {
                sums.file_reads.push(entry.map_err(map_err("FILE_READS"))?);
            }
        }
        sums.file_overflow = self.overflow("FILE_OVERFLOW")?;
        if let Some(writes) = self.batched("FILE_WRITES", self.cpus, sum_writes)? {
            sums.file_writes = writes;
        } else {
            let writes: PerCpuHashMap<&MapData, FileKey, FileWrite> =
                PerCpuHashMap::try_from(self.map("FILE_WRITES")?)
                    .map_err(map_err("FILE_WRITES"))?;
            for entry in writes.iter() {
                let (key, per_cpu) = entry.map_err(map_err("FILE_WRITES"))?;
                sums.file_writes.push((key, sum_writes(&per_cpu)));
            }
        }
        sums.file_write_overflow = self.overflow("FILE_WRITE_OVERFLOW")?;
        Ok(sums)
    }

    /// A per-process byte overflow map, summed over CPUs.
    fn overflow(&self, name: &'static str) -> Result<Vec<(u32, u64)>, KernelError> {
        let map: PerCpuHashMap<&MapData, u32, u64> =
            PerCpuHashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        map.iter()
            .map(|entry| {
                let (tgid, per_cpu) = entry.map_err(map_err(name))?;
                Ok((tgid, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// Every process event the kernel queued since the last call, oldest first.
    pub fn drain_process_events(&mut self) -> Vec<ProcessEvent> {
        drain(&mut self.process_events)
    }

    /// Every DNS answer the kernel sent since the last call, oldest first. An event the
    /// program cannot have made is logged and left out.
    pub fn drain_dns_answers(&mut self) -> Vec<crate::dns::DnsAnswer> {
        dns::answers(&dns::drain(&mut self.dns_events))
    }

    /// The file path ring, handed to a thread that drains it as it fills and keeps each path
    /// as `convert` makes it; `None` once handed over.
    pub fn path_ring<T: Send + 'static>(
        &mut self,
        convert: fn(&FilePathEvent) -> T,
    ) -> Option<std::io::Result<path_ring::PathRing<T>>> {
        let ring = self.file_paths.take()?;
        Some(path_ring::PathRing::start(ring, convert))
    }

    /// The whole hash map `name` read in batches, or `None` on a kernel without batch
    /// lookups (before 5.6), for the caller to walk it key by key.
    fn batched<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
        slots: usize,
        fold: impl Fn(&[V]) -> V,
    ) -> Result<Option<Vec<(K, V)>>, KernelError> {
        let Some(fd) = batch::map_fd(self.map(name)?) else {
            return Ok(None);
        };
        match batch::lookup_all(fd, slots, fold) {
            Ok(entries) => Ok(Some(entries)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
            Err(cause) => Err(KernelError::Batch { map: name, cause }),
        }
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, KernelError> {
        self.ebpf.map(name).ok_or(KernelError::MissingMap(name))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, KernelError> {
        self.ebpf.map_mut(name).ok_or(KernelError::MissingMap(name))
    }
}

/// Every record of a ring buffer the programs fill with whole `T`s.
fn drain<T: aya::Pod>(ring: &mut RingBuf<MapData>) -> Vec<T> {
    let mut records = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<T>() {
            // SAFETY: T is plain old data (aya::Pod) and the length was checked; the read
            // does not assume alignment.
            records.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) });
        }
    }
    records
}

/// The ring buffer `name`, taken out of the object to be drained.
fn take_ring(ebpf: &mut Ebpf, name: &'static str) -> Result<RingBuf<MapData>, KernelError> {
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    RingBuf::try_from(map).map_err(map_err(name))
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

/// A file's writes from every CPU; `path_generation` is per CPU and means nothing summed.
fn sum_writes(per_cpu: &[FileWrite]) -> FileWrite {
    per_cpu
        .iter()
        .fold(FileWrite::default(), |acc, w| FileWrite {
            bytes: acc.bytes + w.bytes,
            writes: acc.writes + w.writes,
            ..acc
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An exited process's read and write keys and overflow buckets all go; the living stay.
    #[test]
    fn dead_keys_take_an_exited_processs_writes_too() {
        let key = |tgid| FileKey {
            tgid,
            dev: 254 << 20,
            ino: 12,
        };
        let sums = KernelSums {
            file_reads: vec![(key(7), FileRead::default()), (key(8), FileRead::default())],
            file_writes: vec![
                (key(7), FileWrite::default()),
                (key(8), FileWrite::default()),
            ],
            file_write_overflow: vec![(7, 10), (8, 10)],
            ..KernelSums::default()
        };
        let dead = DeadKeys::of(&sums, &HashSet::from([7]));
        assert_eq!(dead.files, vec![key(7)]);
        assert_eq!(dead.file_writes, vec![key(7)]);
        assert_eq!(dead.file_write_overflow, vec![7]);
        assert!(!dead.is_empty());
        assert!(DeadKeys::of(&sums, &HashSet::from([9])).is_empty());
    }

    /// Pinned programs keep writing to the maps they were loaded with; a map left unpinned
    /// would be a fresh, unread one for the next agent (a ring buffer nobody drains).
    #[test]
    fn every_map_the_programs_write_is_pinned() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("the built object parses");
        let mut maps: Vec<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            .filter(|name| !name.starts_with('.')) // .rodata: read-only load-time data
            .collect();
        maps.sort_unstable();
        let mut pinned = PINNED_MAPS.to_vec();
        pinned.sort_unstable();
        assert_eq!(maps, pinned);
    }
}

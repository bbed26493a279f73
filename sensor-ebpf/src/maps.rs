//! Every map and load-time global of the kernel side, in one place.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use sensor_common::{
    AgentState, FileId, FileKey, FileRead, FileWrite, FlowCounters, FlowKey, KernelLayout,
    MAP_COUNT, PROG_COUNT, PortRange, UdpDest, dns::DNS_STAT_COUNT,
};

/// Bytes sent and received per (process, remote address, port, protocol, direction).
/// Key [`FlowKey`], value [`FlowCounters`] per CPU. Written by `sock_send_length` and
/// `sock_recv_length`; read (and summed over CPUs) by the agent's poll loop. Max entries: the
/// agent sets it from `kernel.flow_map_entries` at load; the number here is only the default.
/// A plain preallocated hash, never an LRU: an LRU would evict counted bytes.
#[map]
pub(crate) static FLOWS: PerCpuHashMap<FlowKey, FlowCounters> =
    PerCpuHashMap::with_max_entries(65_536, 0);

/// Bytes that could not get a key of their own in [`FLOWS`] because it was full, per
/// process, so that a process's keys plus its overflow always equal what it sent.
/// Key: tgid; value [`FlowCounters`] per CPU. Written by the send and receive programs; read
/// by the agent. Max entries: set from the flow map's size at load.
#[map]
pub(crate) static FLOW_OVERFLOW: PerCpuHashMap<u32, FlowCounters> =
    PerCpuHashMap::with_max_entries(4_096, 0);

/// The last resort, when [`FLOW_OVERFLOW`] is full too: bytes of no known process.
/// Key: index 0; value [`FlowCounters`] per CPU. Written by the send and receive programs.
#[map]
pub(crate) static UNATTRIBUTED: PerCpuArray<FlowCounters> = PerCpuArray::with_max_entries(1, 0);

/// The destination of the unconnected UDP send a thread is in the middle of.
/// Key: the thread (`bpf_get_current_pid_tgid`); value [`UdpDest`]. Written by the cgroup
/// `udp_sendmsg4`/`udp_sendmsg6` programs, taken (read and deleted) by `sock_send_length` in
/// the same call. Max entries: threads inside a UDP send at once.
#[map]
pub(crate) static UDP_DEST: HashMap<u64, UdpDest> = HashMap::with_max_entries(16_384, 0);

/// Who opened each TCP connection the sensor saw open: key `struct sock *`, value
/// `DIRECTION_*`. Written by `inet_sock_set_state` (set on SYN_SENT / SYN_RECV, deleted on
/// CLOSE); read by the send and receive programs. An LRU: it holds no counts, and a socket
/// evicted from it falls back to the port rule.
#[map]
pub(crate) static SOCK_ROLE: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65_536, 0);

/// Bytes each process read from each file, with the run state that counts each page once.
/// Key [`FileKey`], value [`FileRead`], its sums added to atomically. Written by the
/// `file_read` programs; read by the agent. Max entries: set from `kernel.file_map_entries`
/// at load. Not an LRU: it holds counts.
#[map]
pub(crate) static FILE_READS: HashMap<FileKey, FileRead> = HashMap::with_max_entries(65_536, 0);

/// Bytes a process read while [`FILE_READS`] was full, without their file. Key: tgid; value:
/// bytes per CPU. Written by the `file_read` programs; read by the agent.
#[map]
pub(crate) static FILE_OVERFLOW: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::with_max_entries(4_096, 0);

/// Bytes each process wrote to each file. Key [`FileKey`] (the same device and inode as
/// [`FILE_READS`], so that a file's writer and its readers meet), value [`FileWrite`] per CPU.
/// Written by the `file_write` programs; read (and summed over CPUs) by the agent. Max
/// entries: set from `kernel.file_map_entries` at load. Not an LRU: it holds counts.
#[map]
pub(crate) static FILE_WRITES: PerCpuHashMap<FileKey, FileWrite> =
    PerCpuHashMap::with_max_entries(65_536, 0);

/// Bytes a process wrote while [`FILE_WRITES`] was full, without their file. Key: tgid;
/// value: bytes per CPU. Written by the `file_write` programs; read by the agent.
#[map]
pub(crate) static FILE_WRITE_OVERFLOW: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::with_max_entries(4_096, 0);

/// Files whose path was sent on [`FILE_PATHS`]: key [`FileId`]. Written by the `file_read`
/// and `file_write` programs; emptied by each agent at start, so that it learns the paths
/// again. An LRU: a file evicted here only has its path sent once more.
#[map]
pub(crate) static PATH_SENT: LruHashMap<FileId, u8> = LruHashMap::with_max_entries(65_536, 0);

/// File paths ([`sensor_common::FilePathEvent`]), one per file on its first read or write.
/// Written by the `file_read` and `file_write` programs; drained by the agent's path thread as
/// it fills (at most every 2 ms) and once more at every poll. 4 MiB: 4,000 events, about 27 ms
/// of `tar` opening 150,000 new files a second, so that the thread, late on a busy host, still
/// drains it in time (1 MiB dropped paths at 8 reading threads on 2 CPUs). A full buffer drops
/// the path (counted as `file_paths`), never a byte; the path is sent again at the file's next
/// read or write. Pinned like every map the programs write: an agent that continues an older
/// agent's maps (the same `MAP_LAYOUT_VERSION`) keeps that ring's size (1 MiB before this
/// one) until the pins are removed; its thread drains it as it fills all the same.
#[map]
pub(crate) static FILE_PATHS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Process exec, fork and exit events ([`sensor_common::ProcessEvent`]), for naming
/// processes after they are gone. Written by the `process` programs; drained by the agent at
/// every poll. 256 KiB: about 880 events between two polls; a full buffer drops the event
/// and counts it (`process_events`), never a byte of the sums.
#[map]
pub(crate) static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// DNS answers ([`sensor_common::DnsEvent`]): question name and addresses, one per good
/// response, trimmed after its name (`DnsEvent::sent_len`). Written by `dns_ingress`; drained
/// by the agent at every poll. 1 MiB: about 4,500 answers (232 bytes each, with the ring's
/// header, for a 20-byte name; 2,260 of the longest names) between two polls (a burst of
/// 5,000 whole events in under a second overflowed 256 KiB); a full buffer drops the answer
/// and counts it (`dns`).
#[map]
pub(crate) static DNS_EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Responses parsed and sent, and responses refused as malformed per reason, indexed by
/// `sensor_common::dns::DNS_STAT_*` and `Malformed`. Value: count per CPU. Written by
/// `dns_ingress`; exported as `exfil_sensor_dns_answers_total` and
/// `exfil_sensor_dns_malformed_total{reason}`.
#[map]
pub(crate) static DNS_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DNS_STAT_COUNT, 0);

/// Which process aimed each socket at port 53: key the socket cookie, value its tgid. Written
/// by the connect hooks (`dns_connect4`/`6`) and the unconnected-send hooks; read by
/// `dns_ingress`, which has only the socket (it runs in softirq). An LRU of 16,384 sockets:
/// it holds no counts, and an answer on a socket it forgot is sent without its process.
#[map]
pub(crate) static DNS_SOCKETS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16_384, 0);

/// The ingress program's scratch: the copied message and the event it fills (a
/// `dns::DnsScratch`, too big for the 512-byte stack). Key: index 0, per CPU.
#[map]
pub(crate) static DNS_SCRATCH: PerCpuArray<crate::dns::DnsScratch> =
    PerCpuArray::with_max_entries(1, 0);

/// Errors per program (a failed kernel read, say), indexed by `sensor_common::PROG_*`.
/// Value: count per CPU. Written by every program; exported as
/// `exfil_sensor_kernel_errors_total{program}`.
#[map]
pub(crate) static KERNEL_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROG_COUNT, 0);

/// Inserts refused because a map was full, indexed by `sensor_common::MAP_*`.
/// Value: count per CPU. Exported as `exfil_sensor_kernel_drops_total{map}`.
#[map]
pub(crate) static KERNEL_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAP_COUNT, 0);

/// The running agent ([`AgentState`]): its thread group id, so that it never counts its own
/// traffic, and its generation, so that it is sent the paths of files read before it started.
/// A map, not a load-time constant: pinned programs outlive the agent that loaded them, and
/// each new agent writes itself here at start. Key: index 0; written by the agent; read by
/// every program that counts (an array lookup the JIT inlines).
#[map]
pub(crate) static AGENT: Array<AgentState> = Array::with_max_entries(1, 0);

/// The running agent, or a zero state before the first one wrote itself.
#[inline(always)]
pub(crate) fn agent() -> AgentState {
    AGENT.get(0).copied().unwrap_or_default()
}

/// Whether `tgid` is the running agent.
#[inline(always)]
pub(crate) fn is_agent(tgid: u32) -> bool {
    agent().tgid == tgid
}

/// Field offsets of the running kernel, read by the agent from BTF.
#[unsafe(no_mangle)]
pub(crate) static LAYOUT: Global<KernelLayout> = Global::new(KernelLayout {
    // Fallbacks read from Linux 6.18's BTF (`struct sock_common`, `struct sock`); the agent
    // always overrides them with what the running kernel says.
    skc_daddr: 0,
    skc_dport: 12,
    skc_num: 14,
    skc_family: 16,
    skc_v6_daddr: 56,
    sk_protocol: 532,
    task_pid: 1264,
    task_tgid: 1268,
    bprm_filename: 96,
    mapping_host: 0,
    inode_ino: 64,
    inode_sb: 40,
    inode_size: 80,
    sb_dev: 16,
    page_shift: 12,
    inode_dentry: 352,
    dentry_alias: 176,
    dentry_parent: 24,
    dentry_name: 32,
    qstr_name: 8,
    kiocb_filp: 0,
    kiocb_pos: 8,
    file_inode: 32,
    iter_data_source: 2,
    iter_count: 24,
    inode_generation: 124,
    _pad: [0; 2],
});

/// The ephemeral port range, read by the agent from `net.ipv4.ip_local_port_range`.
#[unsafe(no_mangle)]
pub(crate) static EPHEMERAL_PORTS: Global<PortRange> = Global::new(PortRange {
    // The kernel's default (net/ipv4/af_inet.c, inet_init_net).
    low: 32_768,
    high: 60_999,
});

/// Adds `n` to `*sum` with one atomic add (`BPF_ATOMIC | BPF_ADD` without fetch, which every
/// BPF instruction set version has), for a value several CPUs add to at once.
///
/// # Safety
/// `sum` points to a live, 8-byte aligned `u64`.
#[inline(always)]
pub(crate) unsafe fn atomic_add(sum: *mut u64, n: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: as the caller promises. The target has no `AtomicU64::fetch_add` (no
    // compare-and-swap in its spec), so the intrinsic; its result is unused, as XADD needs.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            sum, n,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: as the caller promises (the host build only type-checks the programs).
    unsafe {
        core::sync::atomic::AtomicU64::from_ptr(sum)
            .fetch_add(n, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Replaces `*word` with `new` if it still holds `old` (`BPF_ATOMIC | BPF_CMPXCHG`); whether
/// it did.
///
/// # Safety
/// `word` points to a live, 8-byte aligned `u64`.
#[inline(always)]
pub(crate) unsafe fn compare_and_swap(word: *mut u64, old: u64, new: u64) -> bool {
    #[cfg(target_arch = "bpf")]
    // SAFETY: as the caller promises.
    unsafe {
        use core::intrinsics::AtomicOrdering::SeqCst;
        core::intrinsics::atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(word, old, new).1
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: as the caller promises (the host build only type-checks the programs).
    unsafe {
        use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
        AtomicU64::from_ptr(word)
            .compare_exchange(old, new, SeqCst, SeqCst)
            .is_ok()
    }
}

/// Adds one to a per-CPU counter slot. Programs run with migration disabled and the same
/// program does not nest on one CPU, so a plain add on the CPU's own slot is exact.
#[inline(always)]
pub(crate) fn bump(array: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = array.get_ptr_mut(index) {
        // SAFETY: the pointer is this CPU's slot of a live map value.
        unsafe { *slot += 1 };
    }
}

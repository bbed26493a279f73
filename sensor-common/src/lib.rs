//! Types shared by the kernel programs (`sensor-ebpf`) and the agent (`sensor`).
//!
//! Every type here crosses the kernel/user boundary as raw bytes, so each is `#[repr(C)]`,
//! `Copy`, holds no `bool` or Rust enum (named `u8` constants instead), spells out its padding,
//! and has its size asserted: a layout change fails the build on both sides at once.
#![cfg_attr(not(test), no_std)]

pub mod dns;

/// Layout version of the shared map types. Bumped on any change to a key or value type, so
/// that a future agent can tell pinned maps of an older layout from its own.
pub const MAP_LAYOUT_VERSION: u32 = 10;

/// `FlowKey::family` values (not the kernel's `AF_*` numbers: these are what we report).
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// `FlowKey::protocol` values, the IANA protocol numbers.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// `FlowKey::direction` values: who opened the connection.
/// This host connected (or, for UDP, sends from an ephemeral port).
pub const DIRECTION_OUTBOUND: u8 = 1;
/// This host accepted the connection (or, for UDP, answers from a fixed port).
pub const DIRECTION_INBOUND: u8 = 2;

/// One process talking to one remote endpoint: the key of the flow map.
///
/// IPv4 addresses (and v4-mapped IPv6 ones) sit in the first four bytes of `addr`, the rest
/// zero, with `family == FAMILY_IPV4`. `port`, in host byte order, is the remote port of an
/// outbound flow and the local port of an inbound one, so that the other side's ephemeral
/// ports never split a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// The process (thread group id, what userspace calls the pid).
    pub tgid: u32,
    pub port: u16,
    pub family: u8,
    pub protocol: u8,
    pub addr: [u8; 16],
    pub direction: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 32);

/// Per-CPU running sums for one [`FlowKey`]; userspace adds the CPUs together.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Bytes the send calls reported as sent (`sock_send_length`'s `ret` when positive).
    pub sent: u64,
    /// Send calls that sent at least one byte.
    pub sends: u64,
    /// Bytes the receive calls returned (`sock_recv_length`, not counting `MSG_PEEK`).
    pub received: u64,
    /// Receive calls that returned at least one byte.
    pub recvs: u64,
}
const _: () = assert!(core::mem::size_of::<FlowCounters>() == 32);

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`), which tells a client
/// port from a service port for sockets whose opening the sensor did not see.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}
const _: () = assert!(core::mem::size_of::<PortRange>() == 4);

/// Where one unconnected UDP send is going: written by the cgroup `sendmsg4`/`sendmsg6`
/// programs, which see the address the caller passed, and taken by the send program, which
/// sees the byte count, in the same thread of the same call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpDest {
    /// The sending `struct sock *`, so a stale entry never lands on another socket's send.
    pub sk: u64,
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<UdpDest>() == 32);

/// One process reading or writing one file: the key of the file-read and file-write maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub tgid: u32,
    /// The file's device, the kernel's `dev_t` encoding (`major << 20 | minor`).
    pub dev: u32,
    pub ino: u64,
}
const _: () = assert!(core::mem::size_of::<FileKey>() == 16);

/// What one process read of one file. Not per CPU: the run must follow a process's reads from
/// whichever CPU they come. Threads of the process read at once: the run changes only by
/// compare-and-swap of its one word, the sums only by atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileRead {
    /// The current sequential run, [`ReadRun::pack`]ed.
    pub run: u64,
    /// Bytes read: each page of a run once, the file's last page clipped to its size.
    pub bytes: u64,
    /// Read calls (or page faults) that added bytes.
    pub reads: u64,
    /// The [`AgentState::generation`] that last had this file's path sent (or found sent):
    /// a new agent knows no path, so each entry's next read checks once more.
    pub path_generation: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FileRead>() == 32);

/// A process's sequential run through a file: its first page and the page after the last one
/// counted. The tracepoints report overlapping page ranges (a small read reports its page
/// again, a large read its remaining range once per batch), so a range that starts inside the
/// run counts only what lies past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRun {
    pub start: u64,
    pub next: u64,
}

impl ReadRun {
    /// How far before `next` a packed run may begin: a re-read of a page further back than
    /// this (256 MiB of 4 KiB pages) behind a longer run counts again.
    pub const MAX_LENGTH: u64 = 0xffff;

    /// One word: `next` in the upper 48 bits, the run's length (at most
    /// [`ReadRun::MAX_LENGTH`]) in the lower 16. 0 is no run (`next` is at least 1).
    #[inline(always)]
    pub fn pack(self) -> u64 {
        let length = self.next - self.start;
        let length = if length < Self::MAX_LENGTH {
            length
        } else {
            Self::MAX_LENGTH
        };
        (self.next << 16) | length
    }

    #[inline(always)]
    pub fn unpack(word: u64) -> Option<Self> {
        if word == 0 {
            return None;
        }
        let next = word >> 16;
        Some(Self {
            start: next - (word & Self::MAX_LENGTH),
            next,
        })
    }

    /// A read of pages `first..=last` after `run`: the first page it counts (past `last`
    /// when every page is in already) and the run after it.
    #[inline(always)]
    pub fn advance(run: Option<Self>, first: u64, last: u64) -> (u64, Self) {
        match run {
            Some(run) if first >= run.start && first <= run.next => {
                let next = if last + 1 > run.next {
                    last + 1
                } else {
                    run.next
                };
                (
                    run.next,
                    Self {
                        start: run.start,
                        next,
                    },
                )
            }
            _ => (
                first,
                Self {
                    start: first,
                    next: last + 1,
                },
            ),
        }
    }
}

/// What one process wrote to one file (key [`FileKey`]), per CPU; userspace adds the CPUs
/// together, so threads of one process writing one file from several CPUs lose nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileWrite {
    /// Bytes written through the page cache: ext4's `copied` per folio, xfs's count per call.
    pub bytes: u64,
    /// Tracepoint hits that added bytes: page-cache chunks on ext4 (a folio's worth at most,
    /// so one `write` call may be several), write calls on xfs.
    pub writes: u64,
    /// As [`FileRead::path_generation`], for this CPU's copy: the agent generation that last
    /// had the path sent (or found sent) from this CPU.
    pub path_generation: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FileWrite>() == 24);

/// The running agent, as the programs see it in the `AGENT` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentState {
    /// Its thread group id: the programs never count its own reads and sends.
    pub tgid: u32,
    /// One more than the previous agent's: a [`FileRead`] of an older generation has its
    /// path sent again, for this agent that has not seen it.
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<AgentState>() == 8);

/// Path components a [`FilePathEvent`] carries, and bytes kept of each (longer are cut).
pub const PATH_DEPTH: usize = 16;
pub const PATH_NAME_LEN: usize = 64;

/// The path of a file, sent once on the first read or write of its (device, inode): the dentry
/// names from the file up to its filesystem's root, NUL-terminated each. The agent adds the
/// mount point. Sent over the `FILE_PATHS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilePathEvent {
    pub dev: u32,
    /// Components filled, the file's own name first; the last is the root ("/") unless the
    /// walk stopped at `PATH_DEPTH`.
    pub depth: u32,
    pub ino: u64,
    pub names: [[u8; PATH_NAME_LEN]; PATH_DEPTH],
}
const _: () = assert!(core::mem::size_of::<FilePathEvent>() == 16 + PATH_DEPTH * PATH_NAME_LEN);

/// Key of the map of files whose path was sent. `generation` is the inode's `i_generation`:
/// a file deleted and another created in its place gets the same inode number (ext4 gives
/// the just-freed one back at once) but a new generation (ext4, xfs and tmpfs draw it at
/// random for every new inode), so the new file's path is sent instead of the old file's
/// being taken for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u32,
    pub generation: u32,
    pub ino: u64,
}
const _: () = assert!(core::mem::size_of::<FileId>() == 16);

/// `ProcessEvent::kind` values.
pub const EVENT_EXEC: u8 = 1;
pub const EVENT_FORK: u8 = 2;
pub const EVENT_EXIT: u8 = 3;

/// Bytes of an exec's file name kept in a [`ProcessEvent`] (longer names are cut).
pub const EXEC_FILENAME_LEN: usize = 256;

/// A process began (fork), became another program (exec) or ended (exit): the rare events
/// that let the agent name a process after it is gone. Sent over the `PROCESS_EVENTS` ring
/// buffer; never one per byte, read or send.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    pub kind: u8,
    pub _pad: [u8; 3],
    /// The process (thread group id).
    pub tgid: u32,
    /// For a fork, the parent's tgid; else 0.
    pub ppid: u32,
    pub _pad2: u32,
    /// The cgroup v2 id (the inode of its directory), which names the systemd unit.
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    /// For an exec, the file name as passed to execve, NUL-terminated; else empty.
    pub filename: [u8; EXEC_FILENAME_LEN],
}
const _: () = assert!(core::mem::size_of::<ProcessEvent>() == 296);

/// Bytes at the head of `struct sock_common` that the send program reads in one helper call;
/// `skc_daddr`, `skc_dport`, `skc_num` and `skc_family` must lie inside (they have sat in the first 18
/// bytes since Linux 2.6; the agent checks the running kernel's BTF before loading).
pub const SOCK_HEAD_LEN: u16 = 24;

/// Bytes of `struct inode` that the file programs read in one helper call, from the lowest of
/// `i_sb`, `i_ino` and `i_size` (which have sat within 48 bytes of each other since Linux
/// 3.x; the agent checks the running kernel's BTF before loading).
pub const INODE_SPAN_LEN: u16 = 64;

/// Where, in the kernel running us, the fields the programs read live. Filled by the agent
/// from BTF and passed as the `LAYOUT` global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// `struct sock_common` byte offsets; all but `skc_v6_daddr` are below [`SOCK_HEAD_LEN`].
    pub skc_daddr: u16,
    pub skc_dport: u16,
    pub skc_num: u16,
    pub skc_family: u16,
    pub skc_v6_daddr: u16,
    /// `struct sock` byte offset of `sk_protocol`.
    pub sk_protocol: u16,
    /// `struct task_struct` byte offsets of `pid` and `tgid`.
    pub task_pid: u16,
    pub task_tgid: u16,
    /// `struct linux_binprm` byte offset of `filename`.
    pub bprm_filename: u16,
    /// `struct address_space` byte offset of `host`; `struct inode` of `i_ino`, `i_sb`,
    /// `i_size`; `struct super_block` of `s_dev`.
    pub mapping_host: u16,
    pub inode_ino: u16,
    pub inode_sb: u16,
    pub inode_size: u16,
    pub sb_dev: u16,
    /// log2 of the page size (12 for 4 KiB pages).
    pub page_shift: u16,
    /// `struct inode` of `i_dentry`; `struct dentry` of `d_u.d_alias`, `d_parent`, `d_name`;
    /// `struct qstr` of `name`.
    pub inode_dentry: u16,
    pub dentry_alias: u16,
    pub dentry_parent: u16,
    pub dentry_name: u16,
    pub qstr_name: u16,
    /// `struct kiocb` of `ki_filp`, `ki_pos`; `struct file` of `f_inode`; `struct iov_iter`
    /// of `data_source`, `count` (O_DIRECT reads).
    pub kiocb_filp: u16,
    pub kiocb_pos: u16,
    pub file_inode: u16,
    pub iter_data_source: u16,
    pub iter_count: u16,
    /// `struct inode` of `i_generation`.
    pub inode_generation: u16,
    pub _pad: [u16; 2],
}
const _: () = assert!(core::mem::size_of::<KernelLayout>() == 56);

/// Index of each program in the `KERNEL_ERRORS` per-CPU array.
pub const PROG_SOCK_SEND_LENGTH: u32 = 0;
pub const PROG_UDP_SENDMSG: u32 = 1;
pub const PROG_SOCK_RECV_LENGTH: u32 = 2;
pub const PROG_INET_SOCK_SET_STATE: u32 = 3;
pub const PROG_PROCESS: u32 = 4;
pub const PROG_FILE_READ: u32 = 5;
pub const PROG_FILE_WRITE: u32 = 6;
/// Number of programs with an error slot; the array's size.
pub const PROG_COUNT: u32 = 7;
/// Program names, in index order, as exported in `exfil_sensor_kernel_errors_total{program}`.
pub const PROG_NAMES: [&str; PROG_COUNT as usize] = [
    "sock_send_length",
    "udp_sendmsg",
    "sock_recv_length",
    "inet_sock_set_state",
    "process",
    "file_read",
    "file_write",
];

/// Index of each map in the `KERNEL_DROPS` per-CPU array: inserts refused because it was full.
pub const MAP_FLOWS: u32 = 0;
pub const MAP_UDP_DEST: u32 = 1;
pub const MAP_FLOW_OVERFLOW: u32 = 2;
pub const MAP_PROCESS_EVENTS: u32 = 3;
pub const MAP_FILE_READS: u32 = 4;
pub const MAP_FILE_PATHS: u32 = 5;
pub const MAP_FILE_WRITES: u32 = 6;
/// A per-process file overflow map (reads' or writes') was full too: those bytes are lost.
pub const MAP_FILE_OVERFLOW: u32 = 7;
/// A DNS answer found no room in the `DNS_EVENTS` ring: the answer is lost, never a byte.
pub const MAP_DNS_EVENTS: u32 = 8;
/// Number of maps with a drop slot; the array's size.
pub const MAP_COUNT: u32 = 9;
/// Map names, in index order, as exported in `exfil_sensor_kernel_drops_total{map}`.
pub const MAP_NAMES: [&str; MAP_COUNT as usize] = [
    "flows",
    "udp_dest",
    "flow_overflow",
    "process_events",
    "file_reads",
    "file_paths",
    "file_writes",
    "file_overflow",
    "dns",
];

/// Bytes of a [`DnsEvent`]'s name: the longest name (255 bytes in wire form, RFC 1035 §3.1)
/// spelt with dots is 253.
pub const DNS_NAME_LEN: usize = 256;

/// One A or AAAA answer of a [`DnsEvent`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsAddr {
    /// An IPv4 address in the first four bytes (the rest zero), or an IPv6 address.
    pub addr: [u8; 16],
    /// Seconds, as the answer gave it (zero when its top bit was set, RFC 2181 §8).
    pub ttl: u32,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<DnsAddr>() == 24);

/// One DNS response as the ingress program parsed it (`dns::parse`): the question name and
/// the addresses that answer it, nothing else of the message. Sent over the `DNS_EVENTS` ring
/// buffer, one per well-formed response with at least one address, and only its first
/// [`DnsEvent::sent_len`] bytes: the name's unused tail stays behind (an answer takes about
/// 230 bytes of the ring, not 464).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEvent {
    /// The process that sent the query on the socket the response arrived on; 0 unknown.
    pub tgid: u32,
    /// Bytes of `name` used.
    pub name_len: u16,
    /// Entries of `addrs` used, 1 to `dns::DNS_ADDRS`.
    pub count: u8,
    pub _pad: u8,
    pub addrs: [DnsAddr; dns::DNS_ADDRS],
    /// The question name: lower case, dotted, no trailing dot, not NUL-terminated.
    pub name: [u8; DNS_NAME_LEN],
}
const _: () = assert!(core::mem::size_of::<DnsEvent>() == 8 + DNS_NAME_LEN + 24 * dns::DNS_ADDRS);

/// Bytes of a [`DnsEvent`] before its name.
pub const DNS_EVENT_HEAD: usize = core::mem::offset_of!(DnsEvent, name);
const _: () = assert!(DNS_EVENT_HEAD == 8 + 24 * dns::DNS_ADDRS);

impl DnsEvent {
    /// An empty event, for the parser to fill.
    pub const EMPTY: Self = Self {
        tgid: 0,
        name_len: 0,
        count: 0,
        _pad: 0,
        addrs: [DnsAddr {
            addr: [0; 16],
            ttl: 0,
            family: 0,
            _pad: [0; 3],
        }; dns::DNS_ADDRS],
        name: [0; DNS_NAME_LEN],
    };

    /// The bytes of the event that are sent: all but the name's unused tail, rounded up to
    /// 8 (those bytes are zero: the event is emptied before each parse).
    #[inline(always)]
    pub fn sent_len(&self) -> usize {
        let len = (DNS_EVENT_HEAD + usize::from(self.name_len) + 7) & !7;
        if len > core::mem::size_of::<Self>() {
            core::mem::size_of::<Self>()
        } else {
            len
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::{
        AgentState, DnsEvent, FileId, FileKey, FilePathEvent, FileRead, FileWrite, FlowCounters,
        FlowKey, KernelLayout, PortRange, ProcessEvent, UdpDest,
    };

    // SAFETY: all thirteen are `#[repr(C)]`, `Copy`, made only of integers, with explicit padding
    // fields, so every bit pattern is a valid value and no byte is uninitialised.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AgentState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for KernelLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for UdpDest {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PortRange {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ProcessEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FileKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FileRead {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FileWrite {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FilePathEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FileId {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DnsEvent {}
}

#[cfg(test)]
mod read_run_tests {
    use super::ReadRun;

    /// Each read's counted pages, from a fresh run, as the programs apply them.
    fn counted(reads: &[(u64, u64)]) -> Vec<u64> {
        let mut word = 0;
        reads
            .iter()
            .map(|&(first, last)| {
                let (from, run) = ReadRun::advance(ReadRun::unpack(word), first, last);
                word = run.pack();
                (last + 1).saturating_sub(from)
            })
            .collect()
    }

    #[test]
    fn small_reads_count_their_page_once() {
        // 1,000-byte reads: page 0 four times, then pages 0-1, then page 1.
        assert_eq!(
            counted(&[(0, 0), (0, 0), (0, 0), (0, 0), (0, 1), (1, 1)]),
            [1, 0, 0, 0, 1, 0]
        );
    }

    #[test]
    fn a_large_read_reported_per_batch_counts_its_range_once() {
        assert_eq!(
            counted(&[(768, 1023), (799, 1023), (830, 1023)]),
            [256, 0, 0]
        );
    }

    #[test]
    fn a_read_before_or_past_the_run_starts_a_new_one() {
        // Pages 10-19, then 30-39 (a skip), then 0-4 (back before the run), then 5-12.
        assert_eq!(
            counted(&[(10, 19), (30, 39), (0, 4), (5, 12)]),
            [10, 10, 5, 8]
        );
    }

    #[test]
    fn packing_keeps_the_run_and_caps_its_length() {
        let run = ReadRun {
            start: 1_000,
            next: 1_700,
        };
        assert_eq!(ReadRun::unpack(run.pack()), Some(run));
        assert_eq!(ReadRun::unpack(0), None);
        let long = ReadRun {
            start: 0,
            next: 1 << 40,
        };
        assert_eq!(
            ReadRun::unpack(long.pack()),
            Some(ReadRun {
                start: (1 << 40) - ReadRun::MAX_LENGTH,
                next: 1 << 40,
            })
        );
    }
}

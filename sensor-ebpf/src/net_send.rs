//! Egress: bytes each process sends to each remote endpoint.
//!
//! `sock_send_length` fires in `sock_sendmsg_nosec` (net/socket.c) after the protocol's
//! `sendmsg` returned, for every path into a socket: write/send/sendto/sendmsg/sendmmsg/writev,
//! sendfile and splice (`splice_to_socket` calls `sock_sendmsg`) and io_uring sends. It runs in
//! the sender's context, so the current task is the process to charge.
//!
//! A raw tracepoint, not a classic one: its arguments are the `TP_PROTO` values in fixed
//! context slots the verifier lets us load directly, and the kernel skips building the
//! trace record. `TP_PROTO(struct sock *sk, int ret, int flags)`
//! (include/trace/events/sock.h); the agent checks that prototype in BTF before attaching.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    maps::PerCpuHashMap,
    programs::RawTracePointContext,
};
use sensor_common::{
    FAMILY_IPV4, FAMILY_IPV6, FlowCounters, FlowKey, MAP_EGRESS, MAP_EGRESS_OVERFLOW,
    PROG_SOCK_SEND_LENGTH, PROTO_TCP, PROTO_UDP, SOCK_HEAD_LEN,
};

use crate::maps::{
    EGRESS, EGRESS_OVERFLOW, EGRESS_UNATTRIBUTED, KERNEL_DROPS, KERNEL_ERRORS, LAYOUT, OWN_TGID,
    UDP_DEST, bump,
};

// include/linux/socket.h and include/uapi/linux/in.h
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
/// An MPTCP socket's sends pass here once (its subflows send below `sock_sendmsg`): count as TCP.
const IPPROTO_MPTCP: u16 = 262;

const HEAD: usize = SOCK_HEAD_LEN as usize;

/// A kernel read failed; the event is counted as an error of this program.
struct ReadError;

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    match try_sock_send_length(&ctx) {
        Ok(()) => 0,
        Err(ReadError) => {
            bump(&KERNEL_ERRORS, PROG_SOCK_SEND_LENGTH);
            0
        }
    }
}

fn try_sock_send_length(ctx: &RawTracePointContext) -> Result<(), ReadError> {
    // `int ret`: bytes the protocol accepted, or a negative errno.
    let ret = ctx.arg::<u64>(1) as i32;
    if ret <= 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == OWN_TGID.load() {
        return Ok(());
    }
    let sk = ctx.arg::<u64>(0) as *const u8;
    let layout = LAYOUT.load();
    // One helper call for address, port and family: they share the head of sock_common.
    let head: [u8; HEAD] = read_kernel(sk, 0)?;
    let family = u16::from_ne_bytes(head_bytes(&head, layout.skc_family)?);
    if family != AF_INET && family != AF_INET6 {
        return Ok(()); // Unix-domain and other local sockets are not egress
    }
    let protocol = match read_kernel::<u16>(sk, layout.sk_protocol)? {
        IPPROTO_TCP | IPPROTO_MPTCP => PROTO_TCP,
        IPPROTO_UDP => PROTO_UDP,
        _ => return Ok(()),
    };
    let mut key = FlowKey {
        tgid,
        port: u16::from_be_bytes(head_bytes(&head, layout.skc_dport)?),
        family: FAMILY_IPV4,
        protocol,
        addr: [0; 16],
    };
    if family == AF_INET {
        key.addr[..4].copy_from_slice(&head_bytes::<4>(&head, layout.skc_daddr)?);
    } else {
        let v6: [u8; 16] = read_kernel(sk, layout.skc_v6_daddr)?;
        // A v4-mapped peer (::ffff:a.b.c.d) is the IPv4 address it stands for.
        let mapped = v6[..10].iter().all(|b| *b == 0) && v6[10] == 0xff && v6[11] == 0xff;
        if mapped {
            key.addr[..4].copy_from_slice(&v6[12..]);
        } else {
            key.family = FAMILY_IPV6;
            key.addr = v6;
        }
    }
    if protocol == PROTO_UDP {
        take_udp_dest(pid_tgid, sk, &mut key);
    }
    add_egress(&key, ret as u64);
    Ok(())
}

/// An unconnected UDP socket has no peer: the cgroup sendmsg program of this same call left
/// the address the caller gave. It also wins on a connected socket sent to another address.
#[inline(always)]
fn take_udp_dest(pid_tgid: u64, sk: *const u8, key: &mut FlowKey) {
    let Some(dest) = UDP_DEST.get_ptr(pid_tgid) else {
        return;
    };
    // SAFETY: a live entry of a map only this thread's sends touch.
    let dest = unsafe { *dest };
    let _ = UDP_DEST.remove(pid_tgid);
    if dest.sk == sk as u64 {
        key.addr = dest.addr;
        key.port = dest.port;
        key.family = dest.family;
    }
}

#[inline(always)]
fn read_kernel<T>(base: *const u8, offset: u16) -> Result<T, ReadError> {
    // SAFETY: `bpf_probe_read_kernel` validates the address; offsets come from BTF.
    unsafe { bpf_probe_read_kernel(base.add(usize::from(offset)).cast::<T>()) }
        .map_err(|_| ReadError)
}

/// `N` bytes of the sock_common head at `offset`. The offset is a frozen read-only global, so
/// the verifier knows it; the check keeps the access inside the buffer for any value.
#[inline(always)]
fn head_bytes<const N: usize>(head: &[u8; HEAD], offset: u16) -> Result<[u8; N], ReadError> {
    let start = usize::from(offset);
    let mut out = [0u8; N];
    out.copy_from_slice(head.get(start..start + N).ok_or(ReadError)?);
    Ok(out)
}

/// Adds `bytes` to the key's per-CPU sums, creating the key on first sight. When the map is
/// full the bytes go to the process's overflow bucket, and when that map is full too, to the
/// unattributed one; each refusal is counted. Nothing sent is lost.
#[inline(always)]
fn add_egress(key: &FlowKey, bytes: u64) {
    if add_or_insert(&EGRESS, key, bytes) {
        return;
    }
    bump(&KERNEL_DROPS, MAP_EGRESS);
    if add_or_insert(&EGRESS_OVERFLOW, &key.tgid, bytes) {
        return;
    }
    bump(&KERNEL_DROPS, MAP_EGRESS_OVERFLOW);
    if let Some(sums) = EGRESS_UNATTRIBUTED.get_ptr_mut(0) {
        add_to(sums, bytes);
    }
}

/// Adds to `key`'s sums, creating it if needed; false when the map is full.
#[inline(always)]
fn add_or_insert<K>(map: &PerCpuHashMap<K, FlowCounters>, key: &K, bytes: u64) -> bool {
    if let Some(sums) = map.get_ptr_mut(key) {
        add_to(sums, bytes);
        return true;
    }
    let first = FlowCounters { bytes, sends: 1 };
    if map.insert(key, first, u64::from(BPF_NOEXIST)).is_ok() {
        return true;
    }
    // Another CPU may have created the key between our lookup and insert (EEXIST): add there.
    if let Some(sums) = map.get_ptr_mut(key) {
        add_to(sums, bytes);
        return true;
    }
    false
}

#[inline(always)]
fn add_to(sums: *mut FlowCounters, bytes: u64) {
    // SAFETY: `sums` is this CPU's value of a live map entry; programs do not nest on one CPU.
    unsafe {
        (*sums).bytes += bytes;
        (*sums).sends += 1;
    }
}

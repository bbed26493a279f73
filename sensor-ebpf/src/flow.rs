//! What the socket programs share: from a `struct sock *` to a flow key, and the accounting
//! that never loses a byte.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_probe_read_kernel, maps::PerCpuHashMap};
use sensor_common::{
    DIRECTION_INBOUND, DIRECTION_OUTBOUND, FAMILY_IPV4, FAMILY_IPV6, FlowCounters, FlowKey,
    MAP_FLOW_OVERFLOW, MAP_FLOWS, PROTO_TCP, PROTO_UDP, SOCK_HEAD_LEN,
};

use crate::maps::{
    EPHEMERAL_PORTS, FLOW_OVERFLOW, FLOWS, KERNEL_DROPS, LAYOUT, SOCK_ROLE, UNATTRIBUTED, bump,
};

// include/linux/socket.h and include/uapi/linux/in.h
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
pub(crate) const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
/// An MPTCP socket's data passes `sock_sendmsg`/`sock_recvmsg` once (its subflows below
/// them): count it as TCP.
pub(crate) const IPPROTO_MPTCP: u16 = 262;

const HEAD: usize = SOCK_HEAD_LEN as usize;

/// A kernel read failed; the caller counts it as an error of its program.
pub(crate) struct ReadError;

/// A socket's flow before its direction is known: the remote end in `key.port`.
pub(crate) struct Endpoint {
    pub(crate) key: FlowKey,
    pub(crate) local_port: u16,
    /// What `inet_sock_set_state` saw of this TCP socket opening (a `DIRECTION_*`), or
    /// [`ROLE_UNKNOWN`]. Not an `Option`: the verifier refuses the undefined payload of a
    /// `None` that LLVM is free to copy around.
    pub(crate) role: u8,
}

/// `Endpoint::role` of a socket `inet_sock_set_state` did not see open.
const ROLE_UNKNOWN: u8 = 0;

/// The remote end of `sk` for process `tgid`, or `None` for sockets that are not TCP or UDP
/// over IP (Unix-domain sockets, every daemon's own plumbing, end here after one read).
#[inline(always)]
pub(crate) fn socket_endpoint(sk: *const u8, tgid: u32) -> Result<Option<Endpoint>, ReadError> {
    let layout = LAYOUT.load();
    // One helper call for addresses, ports and family: they share the head of sock_common.
    let head: [u8; HEAD] = read_kernel(sk, 0)?;
    let family = u16::from_ne_bytes(bytes_at(&head, layout.skc_family)?);
    if family != AF_INET && family != AF_INET6 {
        return Ok(None);
    }
    // A TCP socket seen opening has its role on record, and needs no protocol read.
    // SAFETY: a value of a live map entry, copied at once.
    let role = SOCK_ROLE
        .get_ptr(sk as u64)
        .map_or(ROLE_UNKNOWN, |role| unsafe { *role });
    let protocol = match role {
        ROLE_UNKNOWN => match read_kernel::<u16>(sk, layout.sk_protocol)? {
            IPPROTO_TCP | IPPROTO_MPTCP => PROTO_TCP,
            IPPROTO_UDP => PROTO_UDP,
            _ => return Ok(None),
        },
        _ => PROTO_TCP,
    };
    let mut key = FlowKey {
        tgid,
        port: u16::from_be_bytes(bytes_at(&head, layout.skc_dport)?),
        family: FAMILY_IPV4,
        protocol,
        addr: [0; 16],
        direction: 0,
        _pad: [0; 7],
    };
    if family == AF_INET {
        key.addr[..4].copy_from_slice(&bytes_at::<4, HEAD>(&head, layout.skc_daddr)?);
    } else {
        let v6: [u8; 16] = read_kernel(sk, layout.skc_v6_daddr)?;
        set_ipv6(&mut key, v6);
    }
    let local_port = u16::from_ne_bytes(bytes_at(&head, layout.skc_num)?);
    Ok(Some(Endpoint {
        key,
        local_port,
        role,
    }))
}

/// Puts an IPv6 address in the key; a v4-mapped one (::ffff:a.b.c.d) is the IPv4 address it
/// stands for.
#[inline(always)]
fn set_ipv6(key: &mut FlowKey, v6: [u8; 16]) {
    (key.family, key.addr) = address_family(v6);
}

/// An IPv6 address as the key stores it: `(FAMILY_IPV4, a.b.c.d)` for a v4-mapped one
/// (::ffff:a.b.c.d), else `(FAMILY_IPV6, the address)`.
#[inline(always)]
pub(crate) fn address_family(v6: [u8; 16]) -> (u8, [u8; 16]) {
    if v6[..10].iter().all(|b| *b == 0) && v6[10] == 0xff && v6[11] == 0xff {
        let mut v4 = [0; 16];
        v4[..4].copy_from_slice(&v6[12..]);
        (FAMILY_IPV4, v4)
    } else {
        (FAMILY_IPV6, v6)
    }
}

/// Who opened the flow: what `inet_sock_set_state` saw for this TCP socket, else the port
/// rule (a fixed local port talking to an ephemeral remote one is a service answering).
/// An inbound flow is keyed by the local port, so clients' ephemeral ports never split it.
#[inline(always)]
pub(crate) fn oriented(endpoint: Endpoint) -> FlowKey {
    let Endpoint {
        mut key,
        local_port,
        role,
    } = endpoint;
    key.direction = if role != ROLE_UNKNOWN {
        role
    } else {
        let ports = EPHEMERAL_PORTS.load();
        let ephemeral = |port: u16| port >= ports.low && port <= ports.high;
        if !ephemeral(local_port) && ephemeral(key.port) {
            DIRECTION_INBOUND
        } else {
            DIRECTION_OUTBOUND
        }
    };
    if key.direction == DIRECTION_INBOUND {
        key.port = local_port;
    }
    key
}

#[inline(always)]
pub(crate) fn read_kernel<T>(base: *const u8, offset: u16) -> Result<T, ReadError> {
    // SAFETY: `bpf_probe_read_kernel` validates the address; offsets come from BTF.
    unsafe { bpf_probe_read_kernel(base.add(usize::from(offset)).cast::<T>()) }
        .map_err(|_| ReadError)
}

/// `N` bytes of `buf` (a struct's span read in one helper call) at `offset`. The offset comes
/// from a frozen read-only global, so the verifier knows it; the check keeps the access inside
/// the buffer for any value.
#[inline(always)]
pub(crate) fn bytes_at<const N: usize, const L: usize>(
    buf: &[u8; L],
    offset: u16,
) -> Result<[u8; N], ReadError> {
    let start = usize::from(offset);
    let mut out = [0u8; N];
    out.copy_from_slice(buf.get(start..start + N).ok_or(ReadError)?);
    Ok(out)
}

/// Adds `delta` to the key's per-CPU sums, creating the key on first sight. When the map is
/// full the bytes go to the process's overflow bucket, and when that map is full too, to the
/// unattributed one; each refusal is counted. Nothing is lost.
#[inline(always)]
pub(crate) fn account(key: &FlowKey, delta: &FlowCounters) {
    if add_or_insert(&FLOWS, key, delta) {
        return;
    }
    bump(&KERNEL_DROPS, MAP_FLOWS);
    if add_or_insert(&FLOW_OVERFLOW, &key.tgid, delta) {
        return;
    }
    bump(&KERNEL_DROPS, MAP_FLOW_OVERFLOW);
    if let Some(sums) = UNATTRIBUTED.get_ptr_mut(0) {
        add_to(sums, delta);
    }
}

/// Adds to `key`'s sums, creating it if needed; false when the map is full.
#[inline(always)]
fn add_or_insert<K>(map: &PerCpuHashMap<K, FlowCounters>, key: &K, delta: &FlowCounters) -> bool {
    if let Some(sums) = map.get_ptr_mut(key) {
        add_to(sums, delta);
        return true;
    }
    if map.insert(key, delta, u64::from(BPF_NOEXIST)).is_ok() {
        return true;
    }
    // Another CPU may have created the key between our lookup and insert (EEXIST): add there.
    if let Some(sums) = map.get_ptr_mut(key) {
        add_to(sums, delta);
        return true;
    }
    false
}

#[inline(always)]
fn add_to(sums: *mut FlowCounters, delta: &FlowCounters) {
    // SAFETY: `sums` is this CPU's value of a live map entry; programs do not nest on one CPU.
    unsafe {
        (*sums).sent += delta.sent;
        (*sums).sends += delta.sends;
        (*sums).received += delta.received;
        (*sums).recvs += delta.recvs;
    }
}

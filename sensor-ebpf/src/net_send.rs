//! Egress: bytes each process sends to each remote endpoint.
//!
//! `sock:sock_send_length` fires in `sock_sendmsg_nosec` (net/socket.c) after the protocol's
//! `sendmsg` returned, for every path into a socket: write/send/sendto/sendmsg/sendmmsg/writev,
//! sendfile and splice (`splice_to_socket` calls `sock_sendmsg`) and io_uring sends. `ret` is
//! what the protocol accepted, or a negative errno. It runs in the sender's context, so the
//! current task is the process to charge.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use sensor_common::{
    FAMILY_IPV4, FAMILY_IPV6, FlowCounters, FlowKey, KernelLayout, MAP_EGRESS,
    PROG_SOCK_SEND_LENGTH, PROTO_TCP, PROTO_UDP,
};

use crate::maps::{EGRESS, EGRESS_OVERFLOW, KERNEL_DROPS, KERNEL_ERRORS, LAYOUT, OWN_TGID, bump};

// include/linux/socket.h and include/uapi/linux/in.h
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
/// An MPTCP socket's sends pass here once (its subflows send below `sock_sendmsg`): count as TCP.
const IPPROTO_MPTCP: u16 = 262;

/// A kernel read failed; the event is counted as an error of this program.
struct ReadError;

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    match try_sock_send_length(&ctx) {
        Ok(()) => 0,
        Err(ReadError) => {
            bump(&KERNEL_ERRORS, PROG_SOCK_SEND_LENGTH);
            0
        }
    }
}

fn try_sock_send_length(ctx: &TracePointContext) -> Result<(), ReadError> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == OWN_TGID.load() {
        return Ok(());
    }
    let layout = LAYOUT.load();
    let ret: i32 = read_field(ctx, layout.tp_send_ret)?;
    if ret <= 0 {
        return Ok(()); // an error or nothing sent
    }
    let family: u16 = read_field(ctx, layout.tp_send_family)?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(()); // Unix-domain and other local sockets are not egress
    }
    let protocol = match read_field::<u16>(ctx, layout.tp_send_protocol)? {
        IPPROTO_TCP | IPPROTO_MPTCP => PROTO_TCP,
        IPPROTO_UDP => PROTO_UDP,
        _ => return Ok(()),
    };
    let sk: u64 = read_field(ctx, layout.tp_send_sk)?;
    let key = remote_endpoint(sk as *const u8, family, &layout, tgid, protocol)?;
    add_egress(&key, ret as u64);
    Ok(())
}

#[inline(always)]
fn read_field<T>(ctx: &TracePointContext, offset: u16) -> Result<T, ReadError> {
    // SAFETY: the offset comes from the tracepoint's own format file; the helper checks the read.
    unsafe { ctx.read_at::<T>(usize::from(offset)) }.map_err(|_| ReadError)
}

#[inline(always)]
fn read_sock<T>(sk: *const u8, offset: u16) -> Result<T, ReadError> {
    // SAFETY: `bpf_probe_read_kernel` validates the address; the offset comes from BTF.
    unsafe { bpf_probe_read_kernel(sk.add(usize::from(offset)).cast::<T>()) }.map_err(|_| ReadError)
}

/// The socket's remote address and port (`struct sock_common`). A v4-mapped IPv6 peer
/// (`::ffff:a.b.c.d`) is reported as the IPv4 address it is.
#[inline(always)]
fn remote_endpoint(
    sk: *const u8,
    family: u16,
    layout: &KernelLayout,
    tgid: u32,
    protocol: u8,
) -> Result<FlowKey, ReadError> {
    let dport: u16 = read_sock(sk, layout.skc_dport)?;
    let mut key = FlowKey {
        tgid,
        port: u16::from_be(dport),
        family: FAMILY_IPV4,
        protocol,
        addr: [0; 16],
    };
    if family == AF_INET {
        let v4: [u8; 4] = read_sock(sk, layout.skc_daddr)?;
        key.addr[..4].copy_from_slice(&v4);
    } else {
        let v6: [u8; 16] = read_sock(sk, layout.skc_v6_daddr)?;
        let mapped = v6[..10].iter().all(|b| *b == 0) && v6[10] == 0xff && v6[11] == 0xff;
        if mapped {
            key.addr[..4].copy_from_slice(&v6[12..]);
        } else {
            key.family = FAMILY_IPV6;
            key.addr = v6;
        }
    }
    Ok(key)
}

/// Adds `bytes` to the key's per-CPU sums, creating the key on first sight. When the map is
/// full the bytes go to the overflow bucket and the drop is counted: nothing sent is lost.
#[inline(always)]
fn add_egress(key: &FlowKey, bytes: u64) {
    if let Some(sums) = EGRESS.get_ptr_mut(key) {
        add_to(sums, bytes);
        return;
    }
    let first = FlowCounters { bytes, sends: 1 };
    if EGRESS.insert(key, first, u64::from(BPF_NOEXIST)).is_ok() {
        return;
    }
    // Another CPU may have created the key between our lookup and insert (EEXIST): add there.
    if let Some(sums) = EGRESS.get_ptr_mut(key) {
        add_to(sums, bytes);
        return;
    }
    bump(&KERNEL_DROPS, MAP_EGRESS);
    if let Some(sums) = EGRESS_OVERFLOW.get_ptr_mut(0) {
        add_to(sums, bytes);
    }
}

#[inline(always)]
fn add_to(sums: *mut FlowCounters, bytes: u64) {
    // SAFETY: `sums` is this CPU's value of a live map entry; programs do not nest on one CPU.
    unsafe {
        (*sums).bytes += bytes;
        (*sums).sends += 1;
    }
}

//! Bytes each process sends to, and receives from, each remote endpoint.
//!
//! `sock_send_length` fires in `sock_sendmsg_nosec` (net/socket.c) after the protocol's
//! `sendmsg` returned, for every path into a socket: write/send/sendto/sendmsg/sendmmsg/writev,
//! sendfile and splice (`splice_to_socket` calls `sock_sendmsg`) and io_uring sends;
//! `sock_recv_length` likewise in `sock_recvmsg_nosec`. Both run in the caller's context, so
//! the current task is the process to charge.
//!
//! Raw tracepoints, not classic ones: the `TP_PROTO` arguments sit in fixed context slots the
//! verifier lets us load directly, and the kernel skips building a trace record per call.
//! `TP_PROTO(struct sock *sk, int ret, int flags)` (include/trace/events/sock.h); the agent
//! checks that prototype in BTF before attaching.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};
use sensor_common::{
    FlowCounters, FlowKey, PROG_SOCK_RECV_LENGTH, PROG_SOCK_SEND_LENGTH, PROTO_UDP,
};

use crate::{
    flow::{ReadError, account, oriented, socket_endpoint},
    maps::{KERNEL_ERRORS, UDP_DEST, bump, is_agent},
};

/// include/linux/socket.h: a peek does not consume data; the real read follows.
const MSG_PEEK: i32 = 2;

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    if try_sock_send_length(&ctx).is_err() {
        bump(&KERNEL_ERRORS, PROG_SOCK_SEND_LENGTH);
    }
    0
}

fn try_sock_send_length(ctx: &RawTracePointContext) -> Result<(), ReadError> {
    // `int ret`: bytes the protocol accepted, or a negative errno.
    let ret = ctx.arg::<u64>(1) as i32;
    if ret <= 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if is_agent(tgid) {
        return Ok(());
    }
    let sk = ctx.arg::<u64>(0) as *const u8;
    let Some(mut endpoint) = socket_endpoint(sk, tgid)? else {
        return Ok(());
    };
    if endpoint.key.protocol == PROTO_UDP {
        take_udp_dest(pid_tgid, sk, &mut endpoint.key);
    }
    let delta = FlowCounters {
        sent: ret as u64,
        sends: 1,
        received: 0,
        recvs: 0,
    };
    account(&oriented(endpoint), &delta);
    Ok(())
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    if try_sock_recv_length(&ctx).is_err() {
        bump(&KERNEL_ERRORS, PROG_SOCK_RECV_LENGTH);
    }
    0
}

fn try_sock_recv_length(ctx: &RawTracePointContext) -> Result<(), ReadError> {
    let ret = ctx.arg::<u64>(1) as i32;
    let flags = ctx.arg::<u64>(2) as i32;
    if ret <= 0 || flags & MSG_PEEK != 0 {
        return Ok(());
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_agent(tgid) {
        return Ok(());
    }
    let sk = ctx.arg::<u64>(0) as *const u8;
    let Some(endpoint) = socket_endpoint(sk, tgid)? else {
        return Ok(());
    };
    let delta = FlowCounters {
        sent: 0,
        sends: 0,
        received: ret as u64,
        recvs: 1,
    };
    account(&oriented(endpoint), &delta);
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

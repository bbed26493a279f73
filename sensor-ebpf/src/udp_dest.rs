//! Unconnected UDP: the destination of each `sendto`/`sendmsg` that names one.
//!
//! The cgroup `sendmsg4`/`sendmsg6` hooks run inside `udp_sendmsg`/`udpv6_sendmsg`
//! (net/ipv4/udp.c, net/ipv6/udp.c) before the datagram is built, with the address the caller
//! passed; `sock_send_length` runs after, in the same thread, with the byte count. These
//! programs leave the address in `UDP_DEST` for it. They never change or refuse a send.
//! A send to port 53 also names its socket's process for the DNS answers (`dns.rs`).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use sensor_common::{FAMILY_IPV4, MAP_UDP_DEST, PROG_UDP_SENDMSG, UdpDest};

use crate::{
    dns::{DNS_PORT, remember_socket},
    flow::address_family,
    maps::{KERNEL_DROPS, KERNEL_ERRORS, UDP_DEST, bump, is_agent},
};

/// Let the send through (a cgroup sock_addr program's verdict).
const ALLOW: i32 = 1;

#[cgroup_sock_addr(sendmsg4)]
pub fn udp_sendmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock_addr; these fields allow 4-byte reads.
    let (ip4, port, sk) = unsafe {
        let addr = &*ctx.sock_addr;
        (addr.user_ip4, addr.user_port, addr.__bindgen_anon_1.sk)
    };
    let mut dest = UdpDest {
        sk: sk as u64,
        family: FAMILY_IPV4,
        port: u16::from_be(port as u16),
        ..UdpDest::default()
    };
    dest.addr[..4].copy_from_slice(&ip4.to_ne_bytes());
    if dest.port == DNS_PORT {
        remember_socket(&ctx);
    }
    remember(dest);
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn udp_sendmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let (ip6, port, sk) = unsafe {
        let addr = &*ctx.sock_addr;
        (addr.user_ip6, addr.user_port, addr.__bindgen_anon_1.sk)
    };
    let mut v6 = [0u8; 16];
    for (chunk, word) in v6.chunks_exact_mut(4).zip(ip6) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let (family, addr) = address_family(v6);
    let dest = UdpDest {
        sk: sk as u64,
        family,
        addr,
        port: u16::from_be(port as u16),
        ..UdpDest::default()
    };
    if dest.port == DNS_PORT {
        remember_socket(&ctx);
    }
    remember(dest);
    ALLOW
}

#[inline(always)]
fn remember(dest: UdpDest) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_agent((pid_tgid >> 32) as u32) {
        return;
    }
    match UDP_DEST.insert(pid_tgid, dest, 0) {
        Ok(()) => {}
        // E2BIG: more threads mid-send than entries; the send is counted, without its address.
        Err(-7) => bump(&KERNEL_DROPS, MAP_UDP_DEST),
        Err(_) => bump(&KERNEL_ERRORS, PROG_UDP_SENDMSG),
    }
}

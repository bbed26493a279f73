//! DNS answers: the ingress program that reads each response arriving for a local socket,
//! and the connect hooks that say which process's socket it is.
//!
//! `dns_ingress` runs on the cgroup2 root for every packet a local socket receives (in softirq,
//! from `sk_filter_trim_cap`, with the packet's data at its IP header). Anything that is not
//! UDP or TCP from port 53 returns at once. A response is copied (at most
//! [`DNS_WINDOW`] bytes) into a per-CPU scratch window, parsed by the shared parser
//! (`sensor_common::dns`), and one [`DnsEvent`] per good response goes to `DNS_EVENTS`: the
//! question name and the addresses with their TTLs, no other byte of the message. The program
//! never drops a packet.
//!
//! The process: the response arrives on the socket that sent the query, so the connect hooks
//! (and the sendmsg hooks, for unconnected sends) remember, by socket cookie, the process that
//! aimed a socket at port 53. A local caching resolver's relayed answer arrives on the
//! application's socket, so it names the application; the upstream answer names the resolver.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_get_current_pid_tgid, bpf_get_socket_cookie},
    macros::{cgroup_skb, cgroup_sock_addr},
    programs::{SkBuffContext, SockAddrContext},
};
use sensor_common::{
    DnsEvent, MAP_DNS_EVENTS,
    dns::{self, DNS_STAT_ANSWERS, DNS_WINDOW, Message, ParseRegs, Repeat, Step, Verdict},
};

use crate::maps::{DNS_EVENTS, DNS_SCRATCH, DNS_SOCKETS, DNS_STATS, KERNEL_DROPS, bump, is_agent};

/// Let the packet or the connect through (a cgroup program's verdict).
const ALLOW: i32 = 1;
pub(crate) const DNS_PORT: u16 = 53;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// The per-CPU scratch of the ingress program: the copied message and the event it makes.
#[repr(C)]
pub(crate) struct DnsScratch {
    pub window: [u8; DNS_WINDOW],
    pub event: DnsEvent,
    /// The parse's numbers between steps (see `ParseRegs` for why here).
    pub regs: ParseRegs,
}

#[cgroup_skb(ingress)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    if let Some((offset, len, clipped)) = dns_payload(&ctx) {
        answer(&ctx, offset, len, clipped);
    }
    ALLOW
}

/// Bytes of a packet the fast path looks at: an IPv4 header without options and the source
/// port after it, or the start of an IPv6 header.
const HEAD: usize = 24;

/// The first [`HEAD`] bytes of the packet: read in place when the kernel has them in the
/// linear part (direct packet access, no helper call: the program runs for every packet every
/// local socket receives), else copied; `None` for a packet too short to be a DNS response.
#[inline(always)]
fn head(ctx: &SkBuffContext) -> Option<[u8; HEAD]> {
    // SAFETY: the kernel passes a valid __sk_buff; `data` and `data_end` are readable by a
    // cgroup_skb program (kernel/bpf cg_skb_is_valid_access, CAP_BPF).
    let (data, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    if data + HEAD <= end {
        // SAFETY: inside the packet's linear data, checked just above.
        return Some(unsafe { core::ptr::read_unaligned(data as *const [u8; HEAD]) });
    }
    ctx.load(0).ok()
}

/// Where the DNS message of a response from port 53 starts, its length and whether it is
/// longer than the window; `None` for anything else.
#[inline(always)]
fn dns_payload(ctx: &SkBuffContext) -> Option<(usize, usize, bool)> {
    let head = head(ctx)?;
    let (l4, protocol, source) = match head[0] >> 4 {
        4 => {
            // Fragments: a later fragment has no ports, and a first one only part of the
            // message (flags and fragment offset, RFC 791).
            if u16::from_be_bytes([head[6], head[7]]) & 0x3fff != 0 {
                return None;
            }
            let l4 = usize::from(head[0] & 0x0f) * 4;
            let source = if l4 == 20 {
                u16::from_be_bytes([head[20], head[21]])
            } else {
                u16::from_be(ctx.load(l4).ok()?)
            };
            (l4, head[9], source)
        }
        // The fixed header only: a response behind extension headers is not read.
        6 => {
            if head[6] != IPPROTO_UDP && head[6] != IPPROTO_TCP {
                return None;
            }
            (40, head[6], u16::from_be(ctx.load(40).ok()?))
        }
        _ => return None,
    };
    if source != DNS_PORT || (protocol != IPPROTO_UDP && protocol != IPPROTO_TCP) {
        return None;
    }
    let total = ctx.len() as usize;
    let (start, len) = if protocol == IPPROTO_UDP {
        let start = l4 + 8;
        (start, total.checked_sub(start)?)
    } else {
        // TCP: the data offset, then the message's 2-byte length (RFC 1035 §4.2.2); only a
        // segment that holds exactly one whole message is read.
        let offset: u8 = ctx.load(l4 + 12).ok()?;
        let data = l4 + usize::from(offset >> 4) * 4;
        let segment = total.checked_sub(data)?;
        if segment < 2 {
            return None;
        }
        let declared = usize::from(u16::from_be(ctx.load(data).ok()?));
        if declared + 2 != segment {
            return None;
        }
        (data + 2, declared)
    };
    Some((start, len, len > DNS_WINDOW))
}

#[inline(always)]
fn answer(ctx: &SkBuffContext, offset: usize, len: usize, clipped: bool) {
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a live per-CPU map value; the program does not nest on a CPU.
    let scratch = unsafe { &mut *scratch };
    let copy = if len > DNS_WINDOW { DNS_WINDOW } else { len };
    if copy == 0 {
        return;
    }
    // SAFETY: `copy` is 1..=DNS_WINDOW, the window's size.
    let loaded = unsafe {
        aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            scratch.window.as_mut_ptr().cast(),
            copy as u32,
        )
    };
    if loaded != 0 {
        return;
    }
    // Nothing of an earlier response may ride along behind this one's name.
    scratch.event = DnsEvent::EMPTY;
    let message = Message::new(&scratch.window, len, clipped);
    match dns::parse::<BpfLoop>(&message, &mut scratch.event, &mut scratch.regs) {
        Verdict::Answer => {}
        Verdict::Ignored(_) => return,
        Verdict::Malformed(reason) => {
            bump(&DNS_STATS, reason as u32);
            return;
        }
    }
    // SAFETY: a cgroup_skb program's context is the __sk_buff.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast::<__sk_buff>().cast()) };
    // SAFETY: a plain value read from a live map entry.
    scratch.event.tgid = unsafe { DNS_SOCKETS.get(cookie) }.copied().unwrap_or(0);
    // Only the used part of the name goes (`DnsEvent::sent_len`, at most the whole event).
    let sent = scratch.event.sent_len();
    // SAFETY: `sent` is at most the event's size; the event is plain bytes in a live map value.
    let bytes = unsafe {
        core::slice::from_raw_parts(core::ptr::from_ref(&scratch.event).cast::<u8>(), sent)
    };
    match DNS_EVENTS.output::<[u8]>(bytes, 0) {
        Ok(()) => bump(&DNS_STATS, DNS_STAT_ANSWERS),
        Err(_) => bump(&KERNEL_DROPS, MAP_DNS_EVENTS),
    }
}

/// The parser's loops run by `bpf_loop` (Linux 5.17): the verifier checks a step's body
/// once (until its state converges), not once per iteration.
struct BpfLoop;

impl Repeat for BpfLoop {
    #[inline(always)]
    fn repeat<S: Step>(times: u32, state: &mut S) {
        // SAFETY: `state` lives on this frame's stack through the call; the callback takes it
        // back as the `S` it is. An error (flags not 0, more than 1 << 23 loops) cannot come.
        unsafe {
            aya_ebpf::helpers::generated::bpf_loop(
                times,
                step::<S> as *mut core::ffi::c_void,
                core::ptr::from_mut(state).cast(),
                0,
            );
        }
    }
}

/// `bpf_loop`'s callback: 0 goes on, 1 stops.
extern "C" fn step<S: Step>(_index: u64, state: *mut core::ffi::c_void) -> i64 {
    // SAFETY: the pointer `BpfLoop::repeat` passed, to its live `S`.
    let state = unsafe { &mut *state.cast::<S>() };
    if state.step() { 0 } else { 1 }
}

#[cgroup_sock_addr(connect4)]
pub fn dns_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock_addr; user_port allows a 4-byte read.
    let port = unsafe { (*ctx.sock_addr).user_port };
    if u16::from_be(port as u16) == DNS_PORT {
        remember_socket(&ctx);
    }
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn dns_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let port = unsafe { (*ctx.sock_addr).user_port };
    if u16::from_be(port as u16) == DNS_PORT {
        remember_socket(&ctx);
    }
    ALLOW
}

/// Remembers the calling process as the owner of the socket that is being aimed at port 53:
/// connected (`dns_connect4`/`6`, glibc's resolver, TCP) or sent on without connecting (the
/// sendmsg hooks).
#[inline(always)]
pub(crate) fn remember_socket(ctx: &SockAddrContext) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_agent(tgid) {
        return;
    }
    // SAFETY: a cgroup sock_addr program's context is the bpf_sock_addr.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // An LRU: the oldest sockets' owners go first, and an answer on a forgotten socket is
    // still sent, without its process.
    let _ = DNS_SOCKETS.insert(cookie, tgid, 0);
}

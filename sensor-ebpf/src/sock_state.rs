//! Who opened each TCP connection: `inet_sock_set_state` fires on every TCP state change
//! (include/trace/events/sock.h), rarely next to the data path.
//! `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`.
//!
//! SCTP changes state through the same tracepoint: only TCP and MPTCP sockets are recorded,
//! so that the send programs can take a recorded socket for TCP without reading its protocol.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use sensor_common::{DIRECTION_INBOUND, DIRECTION_OUTBOUND, PROG_INET_SOCK_SET_STATE};

use crate::{
    flow::{IPPROTO_MPTCP, IPPROTO_TCP, ReadError, read_kernel},
    maps::{KERNEL_ERRORS, LAYOUT, SOCK_ROLE, bump},
};

// include/net/tcp_states.h
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let sk = ctx.arg::<u64>(0);
    let newstate = ctx.arg::<u64>(2) as i32;
    if try_set_state(sk, newstate).is_err() {
        bump(&KERNEL_ERRORS, PROG_INET_SOCK_SET_STATE);
    }
    0
}

fn try_set_state(sk: u64, newstate: i32) -> Result<(), ReadError> {
    let role = match newstate {
        // connect(): this host opens the connection.
        TCP_SYN_SENT => DIRECTION_OUTBOUND,
        // The socket accept() will return, born from a listener's request.
        TCP_SYN_RECV => DIRECTION_INBOUND,
        TCP_CLOSE => {
            // Absent when the sensor did not see the opening: nothing to forget.
            let _ = SOCK_ROLE.remove(sk);
            return Ok(());
        }
        _ => return Ok(()),
    };
    let protocol: u16 = read_kernel(sk as *const u8, LAYOUT.load().sk_protocol)?;
    if protocol != IPPROTO_TCP && protocol != IPPROTO_MPTCP {
        return Ok(());
    }
    SOCK_ROLE.insert(sk, role, 0).map_err(|_| ReadError)
}

//! Who opened each TCP connection: `inet_sock_set_state` fires on every TCP state change
//! (include/trace/events/sock.h), rarely next to the data path.
//! `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use sensor_common::{DIRECTION_INBOUND, DIRECTION_OUTBOUND, PROG_INET_SOCK_SET_STATE};

use crate::maps::{KERNEL_ERRORS, SOCK_ROLE, bump};

// include/net/tcp_states.h
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let sk = ctx.arg::<u64>(0);
    let newstate = ctx.arg::<u64>(2) as i32;
    let result = match newstate {
        // connect(): this host opens the connection.
        TCP_SYN_SENT => SOCK_ROLE.insert(sk, DIRECTION_OUTBOUND, 0),
        // The socket accept() will return, born from a listener's request.
        TCP_SYN_RECV => SOCK_ROLE.insert(sk, DIRECTION_INBOUND, 0),
        TCP_CLOSE => {
            // Absent when the sensor did not see the opening: nothing to forget.
            let _ = SOCK_ROLE.remove(sk);
            Ok(())
        }
        _ => Ok(()),
    };
    if result.is_err() {
        bump(&KERNEL_ERRORS, PROG_INET_SOCK_SET_STATE);
    }
    0
}

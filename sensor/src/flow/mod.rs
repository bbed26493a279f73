//! Flows and file reads: the kernel's per-process sums, with the process named, aggregated
//! into bounded tables that emit interval records.

pub mod class;
pub mod files;
pub mod flows;
pub mod identity;
pub mod interval;
pub mod path_hash;
pub mod paths;
mod proc_dir;
pub mod process;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sensor_common::{FAMILY_IPV6, FlowKey};

pub use self::flows::{FAMILY_OVERFLOW, FlowTable};

/// The remote address of a key, as the IP it is; `None` for an overflow row.
pub fn destination(key: &FlowKey) -> Option<IpAddr> {
    match key.family {
        FAMILY_OVERFLOW => None,
        FAMILY_IPV6 => Some(IpAddr::V6(Ipv6Addr::from(key.addr))),
        _ => {
            let [a, b, c, d, ..] = key.addr;
            Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
        }
    }
}

/// Arithmetic on the kernel's counters.
pub mod counters {
    use sensor_common::FlowCounters;

    /// What `now` adds to `before`. A total that went down belongs to a key the kernel
    /// created afresh, so all of `now` is new.
    pub fn since(now: &FlowCounters, before: &FlowCounters) -> FlowCounters {
        if now.sent < before.sent
            || now.sends < before.sends
            || now.received < before.received
            || now.recvs < before.recvs
        {
            return *now;
        }
        FlowCounters {
            sent: now.sent - before.sent,
            sends: now.sends - before.sends,
            received: now.received - before.received,
            recvs: now.recvs - before.recvs,
        }
    }

    pub fn add(to: &mut FlowCounters, delta: &FlowCounters) {
        to.sent += delta.sent;
        to.sends += delta.sends;
        to.received += delta.received;
        to.recvs += delta.recvs;
    }

    pub fn is_zero(c: &FlowCounters) -> bool {
        *c == FlowCounters::default()
    }
}

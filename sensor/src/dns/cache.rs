//! The name cache: each address the host's DNS answers named, with its most recent names, so
//! that a flow row made now can say which name its address was looked up by.
//!
//! Bounds: at most `dns.max_addresses` addresses (the least recently answered goes), at most
//! [`NAMES_PER_ADDRESS`] names per address (the least recently answered goes). A name counts
//! until its answer's TTL ran out plus `dns.grace`: a connection opened while the answer was
//! fresh may run for hours, and a flow row made during it should still be named.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

// Not `DnsConfig`: the flow table holds the cache, and the config's module depends on flow.
use super::DnsAnswer;

/// Names kept per address. A CDN address serves many names; one process rarely resolves more
/// than one or two of them within a TTL, and the same-pid preference needs only that pid's.
pub const NAMES_PER_ADDRESS: usize = 4;

/// One answer that named an address.
#[derive(Debug, Clone)]
struct Binding {
    name: Arc<str>,
    /// The process that received it, when the kernel knew.
    pid: Option<u32>,
    /// The order of the answer among all the cache took (a poll's answers share one time).
    answered: u64,
    /// When its TTL runs out.
    expires: SystemTime,
}

#[derive(Debug, Default)]
struct Names {
    /// Most recently answered last.
    bindings: Vec<Binding>,
    /// The `answered` of the most recent binding: the address's place in the eviction order.
    last: u64,
}

pub struct NameCache {
    grace: Duration,
    max_addresses: usize,
    addresses: HashMap<IpAddr, Names, foldhash::fast::RandomState>,
    /// (last answered, address), least recently answered first.
    order: BTreeSet<(u64, IpAddr)>,
    /// Answers taken so far: each binding's `answered`.
    answers: u64,
    /// Addresses dropped to make room for a newly answered one, since start.
    pub evictions: u64,
}

impl NameCache {
    /// `dns.grace` and `dns.max_addresses`.
    pub fn new(grace: Duration, max_addresses: usize) -> Self {
        Self {
            grace,
            max_addresses: max_addresses.max(1),
            addresses: HashMap::default(),
            order: BTreeSet::new(),
            answers: 0,
            evictions: 0,
        }
    }

    /// Takes answers received by `now`, oldest first. A name answered again for an address
    /// (by the same process) is refreshed: its new TTL counts, and it is the most recent.
    pub fn learn(&mut self, now: SystemTime, answers: &[DnsAnswer]) {
        for answer in answers {
            if answer.name.is_empty() || answer.addrs.is_empty() {
                continue;
            }
            self.answers += 1;
            let answered = self.answers;
            let name: Arc<str> = Arc::from(answer.name.as_str());
            for (addr, ttl) in &answer.addrs {
                let binding = Binding {
                    name: Arc::clone(&name),
                    pid: answer.pid,
                    answered,
                    expires: now + Duration::from_secs(u64::from(*ttl)),
                };
                self.bind(addr.to_canonical(), binding);
            }
        }
    }

    fn bind(&mut self, addr: IpAddr, binding: Binding) {
        let names = self.addresses.entry(addr).or_default();
        // Most addresses have one name: room for one, not the four a first push makes.
        names.bindings.reserve_exact(1);
        self.order.remove(&(names.last, addr));
        names
            .bindings
            .retain(|b| !(b.name == binding.name && b.pid == binding.pid));
        if names.bindings.len() >= NAMES_PER_ADDRESS {
            names.bindings.remove(0);
        }
        names.last = binding.answered;
        names.bindings.push(binding);
        self.order.insert((names.last, addr));
        while self.addresses.len() > self.max_addresses {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.addresses.remove(&oldest);
            self.evictions += 1;
        }
    }

    /// The name of `addr` for a flow of `pid` at `now`: the most recent one that process
    /// received, else the most recent any process did; none once every answer naming it is
    /// older than its TTL plus the grace period. An IPv4-mapped IPv6 address (an IPv4
    /// connection from an IPv6 socket) is its IPv4 address, as the A record gave it.
    pub fn lookup(&self, now: SystemTime, addr: IpAddr, pid: u32) -> Option<Arc<str>> {
        let names = self.addresses.get(&addr.to_canonical())?;
        let fresh = names
            .bindings
            .iter()
            .rev()
            .filter(|b| now <= b.expires + self.grace);
        let mut any = None;
        for b in fresh {
            if b.pid == Some(pid) {
                return Some(Arc::clone(&b.name));
            }
            any = any.or(Some(b));
        }
        any.map(|b| Arc::clone(&b.name))
    }

    /// Drops what can no longer name anything (past TTL and grace). Called once an interval:
    /// memory follows the answers of the last grace period, not of all time.
    pub fn prune(&mut self, now: SystemTime) {
        let grace = self.grace;
        let order = &mut self.order;
        self.addresses.retain(|addr, names| {
            names.bindings.retain(|b| now <= b.expires + grace);
            if names.bindings.is_empty() {
                order.remove(&(names.last, *addr));
                return false;
            }
            true
        });
    }

    /// Addresses held.
    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }
}

#[cfg(test)]
mod tests;

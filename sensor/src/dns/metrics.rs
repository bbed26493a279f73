//! The name cache's health: how many addresses it names, and how many it had to forget to
//! make room (a sign that `dns.max_addresses` is too small for the host's lookups).

use prometheus::{IntCounter, IntGauge, Registry};

use super::NameCache;

#[derive(Clone)]
pub struct DnsMetrics {
    addresses: IntGauge,
    evictions: IntCounter,
}

impl DnsMetrics {
    /// Registers the metrics in `registry` (once per registry).
    pub fn register(registry: &Registry) -> Self {
        let addresses = IntGauge::new(
            "exfil_sensor_dns_cache_addresses",
            "Addresses the DNS name cache holds a name for (at most dns.max_addresses).",
        )
        .expect("static metric definition");
        let evictions = IntCounter::new(
            "exfil_sensor_dns_cache_evictions_total",
            "Named addresses the DNS name cache dropped to make room for newly answered ones (dns.max_addresses reached).",
        )
        .expect("static metric definition");
        for metric in [
            Box::new(addresses.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(evictions.clone()),
        ] {
            registry
                .register(metric)
                .expect("each metric is registered once, with a static definition");
        }
        Self {
            addresses,
            evictions,
        }
    }

    /// Shows the cache as it is now (`None`: names are off, nothing held).
    pub fn observe(&self, cache: Option<&NameCache>) {
        let (len, evictions) = cache.map_or((0, 0), |c| (c.len(), c.evictions));
        self.addresses.set(i64::try_from(len).unwrap_or(i64::MAX));
        // The counter follows the cache's own count, which only grows.
        let seen = self.evictions.get();
        if evictions > seen {
            self.evictions.inc_by(evictions - seen);
        }
    }
}

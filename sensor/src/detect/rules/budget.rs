//! `budget`: a process of a profile with an allowlist sends more than a little
//! (`outside_allowlist`, 64 KiB a day) to a destination the list does not name, or a
//! profile's service sends more than its daily budget (UTC days, non-loopback bytes).

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{ByService, DAY_MS, Profiles};
use crate::detect::{Hit, Kind, Sender, Traffic, config::BudgetConfig, size};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Budget {
    day: u64,
    /// Per service, bytes sent today (services with a daily budget only).
    daily: BTreeMap<String, u64>,
    /// Per service and destination outside its allowlist, bytes sent today.
    outside: BTreeMap<String, BTreeMap<IpAddr, u64>>,
    #[serde(skip)]
    senders: BTreeMap<String, Sender>,
}

impl Budget {
    pub fn observe(
        &mut self,
        config: &BudgetConfig,
        profiles: &Profiles,
        traffic: &Traffic<'_>,
    ) -> Vec<Hit> {
        let day = traffic.start_ms / DAY_MS;
        if day != self.day {
            self.day = day;
            self.daily.clear();
            self.outside.clear();
            self.senders.clear();
        }
        let mut hits = Vec::new();
        let mut grown: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for f in &traffic.flows {
            let flow = f.flow;
            if let Some(budget) = profiles.daily_budget(&f.profiles) {
                let total = self.daily.service_mut(&flow.service);
                *total += flow.bytes_sent;
                let g = grown.entry(&flow.service).or_default();
                g.0 += flow.bytes_sent;
                g.1 = budget;
                self.senders.service_mut(&flow.service).keep_larger(flow);
            }
            let Some(ip) = flow.destination else { continue };
            if f.allowed || !profiles.has_allowlist(&f.profiles) {
                continue;
            }
            let outside = self
                .outside
                .service_mut(&flow.service)
                .entry(ip)
                .or_default();
            *outside += flow.bytes_sent;
            if *outside >= config.outside_allowlist.as_u64() {
                let service = &flow.service;
                let names: Vec<&str> = f
                    .profiles
                    .iter()
                    .filter_map(|i| profiles.get(*i))
                    .map(|p| p.name.as_str())
                    .collect();
                hits.push(Hit {
                    kind: Kind::Budget,
                    service: service.clone(),
                    destination: Some(ip),
                    per_destination: true,
                    sender: Sender::of(flow),
                    bytes: *outside,
                    growth: 0,
                    window_s: DAY_MS / 1000,
                    started_ms: day * DAY_MS,
                    class: None,
                    summary: format!(
                        "{} ({service}) sent {} to {}, outside its allowlist",
                        flow.comm,
                        size(*outside),
                        traffic.destination(ip, flow.pid),
                    ),
                    description: format!(
                        "{} (pid {}) of {service} sent {} bytes today to {} ({}), which the allowlist of its profile {} does not name; up to {} a day is tolerated.",
                        flow.comm,
                        flow.pid,
                        *outside,
                        traffic.destination(ip, flow.pid),
                        flow.class.as_str(),
                        names.join(", "),
                        size(config.outside_allowlist.as_u64())
                    ),
                });
            }
        }
        for (service, (growth, budget)) in grown {
            let total = self.daily.get(service).copied().unwrap_or(0);
            if total <= budget {
                continue;
            }
            hits.push(Hit {
                kind: Kind::Budget,
                service: service.to_owned(),
                destination: None,
                per_destination: false,
                sender: self.senders.get(service).cloned().unwrap_or_default(),
                bytes: total,
                growth,
                window_s: DAY_MS / 1000,
                started_ms: day * DAY_MS,
                class: None,
                summary: format!(
                    "{service} sent {} today, over its daily budget of {}",
                    size(total),
                    size(budget)
                ),
                description: format!(
                    "{service} sent {total} bytes to non-loopback destinations today (UTC); its profile's daily budget is {budget} bytes."
                ),
            });
        }
        hits
    }
}

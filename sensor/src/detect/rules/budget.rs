//! `budget`: a process of a profile with an allowlist sends more than a little
//! (`outside_allowlist`, 64 KiB a day) to a destination the list does not name, or a
//! profile's service sends more than its daily budget (UTC days, non-loopback bytes).

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{ByService, DAY_MS, Profiles};
use crate::detect::{Flow, Hit, Kind, Sender, Traffic, config::BudgetConfig, size};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Budget {
    day: u64,
    /// Per service, bytes sent today (services with a daily budget only).
    daily: BTreeMap<String, u64>,
    /// Per service and destination outside its allowlist, bytes sent today.
    outside: BTreeMap<String, BTreeMap<IpAddr, u64>>,
    /// Per service and destination whose name its profile denies, bytes sent today. Absent
    /// from an older state file.
    #[serde(default)]
    denied: BTreeMap<String, BTreeMap<IpAddr, u64>>,
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
            self.denied.clear();
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
            if f.denied {
                hits.push(self.denied(profiles, f, ip, traffic));
                continue;
            }
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

    /// A flow to a destination named under a `deny_names` suffix of its profile: an alert at
    /// any byte, with today's bytes to it.
    fn denied(
        &mut self,
        profiles: &Profiles,
        f: &Flow<'_>,
        ip: IpAddr,
        traffic: &Traffic<'_>,
    ) -> Hit {
        let flow = f.flow;
        let service = &flow.service;
        let today = self.denied.service_mut(service).entry(ip).or_default();
        *today += flow.bytes_sent;
        let suffix = flow
            .destination_name
            .as_deref()
            .and_then(|n| profiles.denies(&f.profiles, n))
            .unwrap_or_default();
        let names: Vec<&str> = f
            .profiles
            .iter()
            .filter_map(|i| profiles.get(*i))
            .filter(|p| p.deny_names.iter().any(|s| s == suffix))
            .map(|p| p.name.as_str())
            .collect();
        let to = traffic.destination(ip, flow.pid);
        Hit {
            kind: Kind::Budget,
            service: service.clone(),
            destination: Some(ip),
            per_destination: true,
            sender: Sender::of(flow),
            bytes: *today,
            growth: 0,
            window_s: DAY_MS / 1000,
            started_ms: traffic.start_ms / DAY_MS * DAY_MS,
            class: None,
            summary: format!(
                "{} ({service}) sent {} to {to}, a name its profile denies",
                flow.comm,
                size(*today)
            ),
            description: format!(
                "{} (pid {}) of {service} sent {} bytes today to {to}, named under {suffix}, which the deny_names of its profile {} list; any byte there is an alert.",
                flow.comm,
                flow.pid,
                *today,
                names.join(", "),
            ),
        }
    }
}

//! `burst`: one service sends ≥ 50 MiB to one external destination within 300 s (ATT&CK
//! DET0131: more than 50 MB over one connection), or ≥ 200 MiB to all its external
//! destinations together within an hour (spraying over many hosts).

use crate::detect::HashMap;
use std::{collections::VecDeque, net::IpAddr};

use super::{ByService, largest, ms};
use crate::{
    detect::{Hit, Kind, Sender, Traffic, config::BurstConfig, size},
    flow::interval::FlowInterval,
};

/// Bytes per interval over a sliding window.
#[derive(Debug, Default)]
struct Window {
    /// (interval start, bytes, its largest sender), oldest first.
    entries: VecDeque<(u64, u64, Sender)>,
    sum: u64,
    /// The destination that got most, for a service's window.
    destinations: HashMap<IpAddr, u64>,
}

impl Window {
    fn add(&mut self, start_ms: u64, flow: &FlowInterval) {
        match self.entries.back_mut() {
            Some((start, total, largest)) if *start == start_ms => {
                *total += flow.bytes_sent;
                largest.keep_larger(flow);
            }
            _ => self
                .entries
                .push_back((start_ms, flow.bytes_sent, Sender::of(flow))),
        }
        self.sum += flow.bytes_sent;
    }

    /// Drops intervals that started before `since`.
    fn expire(&mut self, since: u64) {
        while let Some((start, bytes, _)) = self.entries.front() {
            if *start >= since {
                break;
            }
            self.sum -= bytes;
            self.entries.pop_front();
        }
    }

    fn started(&self) -> u64 {
        self.entries.front().map_or(0, |e| e.0)
    }

    fn largest_sender(&self) -> Sender {
        self.entries
            .iter()
            .map(|e| &e.2)
            .max_by_key(|s| s.bytes)
            .cloned()
            .unwrap_or_default()
    }
}

/// Destinations a service's window tells apart.
const MAX_NAMED: usize = 10_000;

#[derive(Debug, Default)]
pub struct Burst {
    /// Per service, per destination.
    pairs: HashMap<String, HashMap<IpAddr, Window>>,
    services: HashMap<String, Window>,
}

impl Burst {
    pub fn observe(&mut self, config: &BurstConfig, traffic: &Traffic<'_>) -> Vec<Hit> {
        let start = traffic.start_ms;
        let mut this_interval: HashMap<&str, u64> = HashMap::default();
        for (name, flows) in traffic.by_service() {
            // Each service's windows are looked up once, when it has watched flows.
            let watched = || flows.iter().filter(|f| f.watched());
            if watched().next().is_none() {
                continue;
            }
            let pairs = self.pairs.service_mut(name);
            for f in watched() {
                if let Some(ip) = f.flow.destination {
                    pairs.entry(ip).or_default().add(start, f.flow);
                }
            }
            // Spraying counts a service's flows but those of profiles that talk to many hosts.
            let mut spread = watched().filter(|f| !f.many_destinations).peekable();
            if spread.peek().is_none() {
                continue;
            }
            let service = self.services.service_mut(name);
            for f in spread {
                let flow = f.flow;
                *this_interval.entry(name).or_default() += flow.bytes_sent;
                service.add(start, flow);
                if let Some(ip) = flow.destination {
                    // For the description only; bounded, and emptied when the service goes
                    // quiet.
                    if service.destinations.len() < MAX_NAMED
                        || service.destinations.contains_key(&ip)
                    {
                        *service.destinations.entry(ip).or_default() += flow.bytes_sent;
                    }
                }
            }
        }
        let mut hits = Vec::new();
        let window_start = traffic.end_ms.saturating_sub(ms(config.window));
        let threshold = config.bytes.as_u64();
        for (service, windows) in &mut self.pairs {
            windows.retain(|ip, window| {
            window.expire(window_start);
            if window.sum >= threshold && window.sum > 0 {
                let sender = window.largest_sender();
                hits.push(Hit {
                    kind: Kind::Burst,
                    service: service.clone(),
                    destination: Some(*ip),
                    per_destination: true,
                    bytes: window.sum,
                    growth: 0,
                    window_s: config.window.as_secs(),
                    started_ms: window.started(),
                    class: None,
                    summary: format!(
                        "{service} sent {} to {} within {}s",
                        size(window.sum),
                        traffic.destination(*ip, sender.pid),
                        config.window.as_secs()
                    ),
                    description: format!(
                        "{service} sent {} bytes to the external address {} (mostly {} pid {} to port {}) in the last {} s; the burst threshold is {} within {} s.",
                        window.sum,
                        traffic.destination(*ip, sender.pid),
                        sender.comm,
                        sender.pid,
                        sender.port,
                        config.window.as_secs(),
                        size(threshold),
                        config.window.as_secs()
                    ),
                    sender,
                });
            }
            !window.entries.is_empty()
            });
        }
        self.pairs.retain(|_, windows| !windows.is_empty());
        let spray_start = traffic.end_ms.saturating_sub(ms(config.spray_window));
        let spray = config.spray_bytes.as_u64();
        self.services.retain(|service, window| {
            window.expire(spray_start);
            if window.entries.is_empty() {
                return false;
            }
            if window.sum >= spray && window.sum > 0 {
                let top = largest(&window.destinations);
                let sender = window.largest_sender();
                hits.push(Hit {
                    kind: Kind::Burst,
                    service: service.clone(),
                    destination: top,
                    per_destination: false,
                    bytes: window.sum,
                    growth: this_interval.get(service.as_str()).copied().unwrap_or(0),
                    window_s: config.spray_window.as_secs(),
                    started_ms: window.started(),
                    class: None,
                    summary: format!(
                        "{service} sent {} to {} external destinations within {}s",
                        size(window.sum),
                        window.destinations.len(),
                        config.spray_window.as_secs()
                    ),
                    description: format!(
                        "{service} sent {} bytes to {} external destinations in the last {} s (the most to {}); the spraying threshold is {} within {} s.",
                        window.sum,
                        window.destinations.len(),
                        config.spray_window.as_secs(),
                        top.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
                        size(spray),
                        config.spray_window.as_secs()
                    ),
                    sender,
                });
            }
            true
        });
        hits
    }
}

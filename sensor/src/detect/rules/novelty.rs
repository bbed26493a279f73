//! `new_destination`: after a learning period (7 days from the agent's first start, kept in
//! the state file), a service sends ≥ 1 MiB to an external destination it never used
//! (Elastic's rare-destination rule). A profile that talks to new hosts all day (a mail
//! relay) is left out.

use crate::detect::HashMap;
use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{ByService, DAY_MS, ms};
use crate::{
    detect::{Hit, Kind, Sender, Traffic, config::NewDestinationConfig, size},
    dns::suffix,
};

/// A destination seen but not yet over the threshold, after learning.
#[derive(Debug, Clone, Default)]
struct Pending {
    bytes: u64,
    first_ms: u64,
    sender: Sender,
}

/// New destinations followed at once.
const MAX_PENDING: usize = 100_000;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Novelty {
    /// The first interval this state saw (Unix ms).
    learning_started_ms: Option<u64>,
    /// Per service, the external destinations it used, with when it last did.
    known: BTreeMap<String, BTreeMap<IpAddr, u64>>,
    #[serde(skip)]
    pending: HashMap<(String, IpAddr), Pending>,
}

impl Novelty {
    pub fn observe(&mut self, config: &NewDestinationConfig, traffic: &Traffic<'_>) -> Vec<Hit> {
        let now = traffic.end_ms;
        let started = *self.learning_started_ms.get_or_insert(traffic.start_ms);
        let learning = ms(config.learning);
        let learned = now.saturating_sub(started) >= learning;
        let threshold = config.bytes.as_u64();
        let mut hits = denied(config, traffic);
        for (name, flows) in traffic.by_service() {
            // The service's known destinations, looked up once.
            if !flows
                .iter()
                .any(|f| f.watched() && f.flow.destination.is_some())
            {
                continue;
            }
            let known = self.known.service_mut(name);
            // This interval's unknown destinations, in the order first sent to: every flow of
            // the service to one of them adds up before the threshold is checked, so that the
            // alert holds all the interval's bytes whatever order its flows come in (Dovecot's
            // imap-login and imap both answer one client).
            let mut touched: Vec<IpAddr> = Vec::new();
            for f in flows.iter().filter(|f| f.watched()) {
                let flow = f.flow;
                let Some(ip) = flow.destination else { continue };
                if let Some(last) = known.get_mut(&ip) {
                    *last = now;
                    continue;
                }
                let allowed_name = flow
                    .destination_name
                    .as_deref()
                    .is_some_and(|n| suffix::first_match(n, &config.allow_names).is_some());
                if !learned || f.many_destinations || allowed_name {
                    remember(known, ip, now, config.max_per_service);
                    continue;
                }
                let key = (flow.service.clone(), ip);
                if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(&key) {
                    // Beyond the bound a destination is learnt rather than followed: memory
                    // stays bounded under a spray over millions of hosts (which `burst` sees).
                    remember(known, ip, now, config.max_per_service);
                    continue;
                }
                let pending = self.pending.entry(key).or_insert_with(|| Pending {
                    first_ms: traffic.start_ms,
                    ..Pending::default()
                });
                pending.bytes += flow.bytes_sent;
                pending.sender.keep_larger(flow);
                if !touched.contains(&ip) {
                    touched.push(ip);
                }
            }
            for ip in touched {
                let key = (name.to_owned(), ip);
                let Some(pending) = self.pending.get(&key) else {
                    continue;
                };
                if pending.bytes < threshold {
                    continue;
                }
                hits.push(Hit {
                    kind: Kind::NewDestination,
                    service: name.to_owned(),
                    destination: Some(ip),
                    per_destination: true,
                    sender: pending.sender.clone(),
                    bytes: pending.bytes,
                    growth: 0,
                    window_s: 0,
                    started_ms: pending.first_ms,
                    class: None,
                    summary: format!(
                        "{name} sent {} to {}, a destination it never used",
                        size(pending.bytes),
                        traffic.destination(ip, pending.sender.pid),
                    ),
                    description: format!(
                        "{name} sent {} bytes to the external address {}, which it had not used since {} (the learning period ended {}); the threshold is {} to a new destination.",
                        pending.bytes,
                        traffic.destination(ip, pending.sender.pid),
                        super::super::episodes::rfc3339(started),
                        super::super::episodes::rfc3339(started.saturating_add(learning)),
                        size(threshold)
                    ),
                });
                remember(known, ip, now, config.max_per_service);
                self.pending.remove(&key);
            }
        }
        // A destination that stayed small for a day has been used: known from now on.
        let known = &mut self.known;
        self.pending.retain(|(service, ip), p| {
            if now.saturating_sub(p.first_ms) < DAY_MS {
                return true;
            }
            remember(known.service_mut(service), *ip, now, config.max_per_service);
            false
        });
        hits
    }
}

/// Flows to destinations named under a `deny_names` suffix: one hit per service and
/// destination with this interval's bytes, whatever else is known or allowed (an open episode
/// grows with later bytes instead).
fn denied(config: &NewDestinationConfig, traffic: &Traffic<'_>) -> Vec<Hit> {
    if config.deny_names.is_empty() {
        return Vec::new();
    }
    let mut hits = Vec::new();
    for (service, flows) in traffic.by_service() {
        // Per destination: bytes, the largest sender, the suffix; in order first sent to.
        let mut to: Vec<(IpAddr, u64, Sender, &str)> = Vec::new();
        for f in flows {
            let flow = f.flow;
            let (Some(ip), Some(name)) = (flow.destination, flow.destination_name.as_deref())
            else {
                continue;
            };
            let Some(suffix) = suffix::first_match(name, &config.deny_names) else {
                continue;
            };
            match to.iter_mut().find(|(dest, ..)| *dest == ip) {
                Some((_, bytes, sender, _)) => {
                    *bytes += flow.bytes_sent;
                    sender.keep_larger(flow);
                }
                None => to.push((ip, flow.bytes_sent, Sender::of(flow), suffix)),
            }
        }
        for (ip, bytes, sender, suffix) in to {
            let dest = traffic.destination(ip, sender.pid);
            hits.push(Hit {
                kind: Kind::NewDestination,
                service: service.to_owned(),
                destination: Some(ip),
                per_destination: true,
                bytes,
                growth: 0,
                window_s: 0,
                started_ms: traffic.start_ms,
                class: None,
                summary: format!(
                    "{service} sent {} to {dest}, a name detect.new_destination.deny_names lists",
                    size(bytes)
                ),
                description: format!(
                    "{service} sent {bytes} bytes to {dest}, named under {suffix}, which detect.new_destination.deny_names lists: any byte there is an alert."
                ),
                sender,
            });
        }
    }
    hits
}

/// Adds a destination, forgetting the least recently used one when the service has too many.
fn remember(known: &mut BTreeMap<IpAddr, u64>, ip: IpAddr, now: u64, max: usize) {
    known.insert(ip, now);
    while known.len() > max.max(1) {
        let Some(oldest) = known
            .iter()
            .min_by_key(|(ip, last)| (**last, **ip))
            .map(|(ip, _)| *ip)
        else {
            break;
        };
        known.remove(&oldest);
    }
}

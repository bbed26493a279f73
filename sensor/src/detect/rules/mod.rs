//! The rules, one module each, and the profiles they share.

pub mod baseline;
pub mod budget;
pub mod burst;
pub mod lineage;
pub mod novelty;

use crate::detect::HashMap;
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use glob::Pattern;

use super::config::Profile;
use crate::{config::ConfigError, dns::suffix, flow::class::DestinationClass};

/// The config's profiles, with their service patterns compiled.
pub struct Profiles {
    profiles: Vec<(Profile, Vec<Pattern>)>,
}

impl Profiles {
    pub fn new(profiles: &[Profile], path: &str) -> Result<Self, ConfigError> {
        let compiled = profiles
            .iter()
            .map(|p| {
                let patterns = p
                    .services
                    .iter()
                    .map(|s| {
                        Pattern::new(s).map_err(|e| ConfigError::Profile {
                            path: path.to_owned(),
                            profile: p.name.clone(),
                            message: format!("services: {s:?}: {}", e.msg),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((p.clone(), patterns))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Self { profiles: compiled })
    }

    /// Indexes of the profiles a process matches.
    pub fn matching(&self, service: &str, comm: &str) -> Vec<usize> {
        self.profiles
            .iter()
            .enumerate()
            .filter(|(_, (p, patterns))| {
                (patterns.is_empty() || patterns.iter().any(|pat| pat.matches(service)))
                    && (p.comms.is_empty() || p.comms.iter().any(|c| c == comm))
            })
            .map(|(i, _)| i)
            .collect()
    }

    pub fn get(&self, index: usize) -> Option<&Profile> {
        self.profiles.get(index).map(|(p, _)| p)
    }

    /// Whether one of `matching`'s profiles lists the destination: by address, by class, or
    /// by the DNS name the flow row has (`allow_names`).
    pub fn allows(
        &self,
        matching: &[usize],
        ip: IpAddr,
        class: DestinationClass,
        name: Option<&str>,
    ) -> bool {
        matching.iter().filter_map(|i| self.get(*i)).any(|p| {
            (p.allow_internal && class == DestinationClass::Internal)
                || p.allow.iter().any(|net| net.contains(&ip))
                || name.is_some_and(|n| suffix::first_match(n, &p.allow_names).is_some())
        })
    }

    /// The first `deny_names` suffix of `matching`'s profiles that `name` falls under.
    pub fn denies(&self, matching: &[usize], name: &str) -> Option<&str> {
        matching
            .iter()
            .filter_map(|i| self.get(*i))
            .find_map(|p| suffix::first_match(name, &p.deny_names))
    }

    /// Whether one of `matching`'s profiles has an allowlist.
    pub fn has_allowlist(&self, matching: &[usize]) -> bool {
        matching
            .iter()
            .filter_map(|i| self.get(*i))
            .any(|p| p.allow_internal || !p.allow.is_empty() || !p.allow_names.is_empty())
    }

    /// Whether one of `matching`'s profiles reads this class for its work.
    pub fn expects_read(&self, matching: &[usize], class: &str) -> bool {
        matching
            .iter()
            .filter_map(|i| self.get(*i))
            .any(|p| p.reads.iter().any(|c| c == class))
    }

    /// The classes `matching`'s profiles hand to local clients.
    pub fn serves(&self, matching: &[usize]) -> Vec<&str> {
        matching
            .iter()
            .filter_map(|i| self.get(*i))
            .flat_map(|p| p.serves.iter().map(String::as_str))
            .collect()
    }

    /// Whether one of `matching`'s profiles talks to new hosts all day.
    pub fn expects_many_destinations(&self, matching: &[usize]) -> bool {
        matching
            .iter()
            .filter_map(|i| self.get(*i))
            .any(|p| p.many_destinations)
    }

    /// The smallest daily budget of `matching`'s profiles.
    pub fn daily_budget(&self, matching: &[usize]) -> Option<u64> {
        matching
            .iter()
            .filter_map(|i| self.get(*i)?.daily_budget)
            .map(|b| b.as_u64())
            .min()
    }
}

pub const HOUR_MS: u64 = 3_600_000;
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// A duration in ms, as the intervals' times are.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The destination that got the most bytes (the lowest address among equals).
pub fn largest(destinations: &HashMap<IpAddr, u64>) -> Option<IpAddr> {
    destinations
        .iter()
        .max_by_key(|(ip, b)| (**b, std::cmp::Reverse(**ip)))
        .map(|(ip, _)| *ip)
}

/// Maps keyed by service name, looked up by `&str`: the name is copied only when a service
/// is new, never once per flow.
pub trait ByService<V> {
    fn service_mut(&mut self, service: &str) -> &mut V;
}

impl<V: Default> ByService<V> for HashMap<String, V> {
    fn service_mut(&mut self, service: &str) -> &mut V {
        if !self.contains_key(service) {
            self.insert(service.to_owned(), V::default());
        }
        self.get_mut(service).expect("present: inserted above")
    }
}

impl<V: Default> ByService<V> for BTreeMap<String, V> {
    fn service_mut(&mut self, service: &str) -> &mut V {
        if !self.contains_key(service) {
            self.insert(service.to_owned(), V::default());
        }
        self.get_mut(service).expect("present: inserted above")
    }
}

/// Median of samples (not empty).
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

/// Median and σ estimated as 1.4826 × the median absolute deviation: robust to the odd
/// anomalous hour in the samples themselves.
pub fn robust(samples: &[u64]) -> Option<(f64, f64)> {
    if samples.is_empty() {
        return None;
    }
    let mut values: Vec<f64> = samples.iter().map(|v| *v as f64).collect();
    let m = median(&mut values);
    let mut deviations: Vec<f64> = values.iter().map(|v| (v - m).abs()).collect();
    let mad = median(&mut deviations);
    Some((m, 1.4826 * mad))
}

//! Detection: rules over interval records that turn the bytes the agent counts into alerts.
//!
//! Pure code. Its only input is the sequence of [`Interval`]s (time comes with them), so the
//! live agent, tests with a fake clock and `exfil-sensor replay` run exactly the same thing.
//! Each rule reports [`Hit`]s; [`episodes`] turns them into alerts with a lifecycle: one
//! alert per (kind, service, destination) episode, updated while it grows, resolved after a
//! quiet period.

pub mod config;
mod episodes;
mod rules;
mod state;
pub mod tamper;

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

pub use config::DetectConfig;

/// Detection's maps: keyed by services, addresses and pids it is told, hashed fast (the
/// order never matters: hits are sorted before they become alerts).
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
pub use episodes::{parse_rfc3339_ms, rfc3339};
use serde::{Deserialize, Serialize};

use self::{
    episodes::Episodes,
    rules::{baseline::History, budget::Budget, burst::Burst, lineage::Lineage, novelty::Novelty},
    state::StateError,
};
use crate::{
    api::{AlertEvent, AlertRecord, Filter},
    flow::{
        class::DestinationClass,
        interval::{FlowInterval, Interval, ProcessInfo},
    },
};

/// Alert kinds (shared/CONTRACT.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Burst,
    Lineage,
    NewDestination,
    Baseline,
    SlowLeak,
    Budget,
    Tamper,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Burst,
        Kind::Lineage,
        Kind::NewDestination,
        Kind::Baseline,
        Kind::SlowLeak,
        Kind::Budget,
        Kind::Tamper,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Burst => "burst",
            Kind::Lineage => "lineage",
            Kind::NewDestination => "new_destination",
            Kind::Baseline => "baseline",
            Kind::SlowLeak => "slow_leak",
            Kind::Budget => "budget",
            Kind::Tamper => "tamper",
        }
    }

    /// Data on its way out of the host now, or certainly sensitive: critical. A change from
    /// the usual that may be benign: warning.
    pub fn severity(self) -> &'static str {
        match self {
            Kind::Burst | Kind::Lineage | Kind::Tamper => "critical",
            _ => "warning",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who sent (the largest part of) what a hit is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    pub pid: u32,
    pub comm: String,
    pub port: u16,
    /// Bytes it sent, to rank senders.
    pub bytes: u64,
}

impl Sender {
    fn of(flow: &FlowInterval) -> Self {
        Self {
            pid: flow.pid,
            comm: flow.comm.clone(),
            port: flow.port,
            bytes: flow.bytes_sent,
        }
    }

    /// Becomes `flow`'s sender if it sent more (a name is copied only then).
    fn keep_larger(&mut self, flow: &FlowInterval) {
        if flow.bytes_sent > self.bytes {
            *self = Self::of(flow);
        }
    }
}

/// What a rule saw that is worth an alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub kind: Kind,
    pub service: String,
    /// The destination named in the alert (a service-wide rule names its largest).
    pub destination: Option<IpAddr>,
    /// The episode is this destination's (`true`) or the whole service's (`false`): a
    /// service-wide episode grows only while its rule keeps hitting.
    pub per_destination: bool,
    pub sender: Sender,
    /// What the rule measured when it fired.
    pub bytes: u64,
    /// This interval's part of `bytes`, for a service-wide episode already open.
    pub growth: u64,
    pub window_s: u64,
    /// When the traffic it is about began (Unix ms).
    pub started_ms: u64,
    pub class: Option<String>,
    pub summary: String,
    pub description: String,
}

/// Bytes as people read them: `80.0 MiB`.
pub fn size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// One interval's traffic as the rules see it: flows to non-loopback destinations with
/// bytes sent, each with its process and what its profiles allow.
pub(crate) struct Traffic<'a> {
    pub start_ms: u64,
    pub end_ms: u64,
    /// Grouped by service: see [`Traffic::by_service`].
    pub flows: Vec<Flow<'a>>,
    /// Each service's flows: a range of `flows`.
    services: Vec<(&'a str, std::ops::Range<usize>)>,
    pub processes: HashMap<u32, &'a ProcessInfo>,
    /// The DNS names the interval's flow rows give their destinations: by (pid, address),
    /// and by address (the first row's).
    names: HashMap<(u32, IpAddr), &'a str>,
    names_by_address: HashMap<IpAddr, &'a str>,
}

/// A destination as alerts word it: `upload.example.test (198.51.100.2)`, or the address
/// alone when no DNS answer named it.
pub(crate) struct Destination<'a> {
    pub ip: IpAddr,
    pub name: Option<&'a str>,
}

impl fmt::Display for Destination<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name {
            Some(name) => write!(f, "{name} ({})", self.ip),
            None => write!(f, "{}", self.ip),
        }
    }
}

impl<'a> Traffic<'a> {
    /// Each service with its flows.
    pub fn by_service(&self) -> impl Iterator<Item = (&'a str, &[Flow<'a>])> {
        self.services
            .iter()
            .map(|(service, range)| (*service, &self.flows[range.clone()]))
    }

    /// The DNS name of `ip` for what `pid` sent: its own row's, else any row's of this
    /// interval.
    pub fn name_of(&self, ip: IpAddr, pid: u32) -> Option<&'a str> {
        self.names
            .get(&(pid, ip))
            .or_else(|| self.names_by_address.get(&ip))
            .copied()
    }

    /// `ip` as an alert words it, named as `pid`'s rows name it.
    pub fn destination(&self, ip: IpAddr, pid: u32) -> Destination<'a> {
        Destination {
            ip,
            name: self.name_of(ip, pid),
        }
    }
}

pub(crate) struct Flow<'a> {
    pub flow: &'a FlowInterval,
    /// Profiles (indexes into the config's) that match the sending process, shared by the
    /// flows of one (service, comm).
    pub profiles: std::rc::Rc<[usize]>,
    /// A profile of the sender allows this destination: out of every rule but `budget`.
    pub allowed: bool,
    /// A profile of the sender talks to many hosts (a mail relay).
    pub many_destinations: bool,
    /// A profile of the sender denies the destination's DNS name (`deny_names`): a `budget`
    /// alert at any byte.
    pub denied: bool,
}

impl Flow<'_> {
    /// Counted by the rules that watch what leaves the host: external, not allowlisted.
    pub fn watched(&self) -> bool {
        !self.allowed && self.flow.class == DestinationClass::External
    }
}

/// Everything detection knows, and the alerts it raised.
pub struct Detector {
    config: DetectConfig,
    profiles: rules::Profiles,
    state: State,
    state_file: Option<PathBuf>,
    /// The state changed in a way worth writing now (an alert raised or resolved, an hour
    /// ended).
    dirty: bool,
    /// The state file's text as [`Detector::restore`] read it.
    restored: Option<String>,
}

/// What survives a restart (the state file), and the short windows that need not.
#[derive(Default, Serialize, Deserialize)]
struct State {
    episodes: Episodes,
    novelty: Novelty,
    history: History,
    budget: Budget,
    #[serde(skip)]
    burst: Burst,
    #[serde(skip)]
    lineage: Lineage,
}

impl Detector {
    /// A detector with no history. `profiles` are compiled from the config (errors name
    /// `config_path`).
    pub fn new(
        config: &DetectConfig,
        config_path: &str,
    ) -> Result<Self, crate::config::ConfigError> {
        let config = config.normalized();
        Ok(Self {
            profiles: rules::Profiles::new(&config.profile, config_path)?,
            state_file: config.state_file.clone(),
            config,
            state: State::default(),
            dirty: false,
            restored: None,
        })
    }

    /// Reads the state file, if the config names one and it exists. A state file that
    /// cannot be read is set aside (renamed `.bad`) and detection starts afresh: losing
    /// baselines must not stop the agent. Returns what happened, for the log.
    pub fn restore(&mut self) -> Result<Option<String>, StateError> {
        let Some(path) = self.state_file.clone() else {
            return Ok(None);
        };
        match state::read::<State>(&path)? {
            state::Read::Missing => Ok(None),
            state::Read::Loaded(state, text) => {
                let note = format!(
                    "detection state restored from {}: {} alerts open",
                    path.display(),
                    state.episodes.open()
                );
                self.state = *state;
                self.restored = Some(text);
                Ok(Some(note))
            }
            state::Read::SetAside { moved_to, reason } => Ok(Some(format!(
                "detection state {} unreadable ({reason}); moved to {} and starting afresh",
                path.display(),
                moved_to.display()
            ))),
        }
    }

    /// Takes the state a state file's `text` holds (a journal start record's copy), for
    /// replay: the same learning the live agent started from. Why not, when it is not one.
    pub fn restore_text(&mut self, text: &str) -> Result<(), String> {
        self.state = state::parse::<State>(text)?;
        self.restored = Some(text.to_owned());
        Ok(())
    }

    /// New rules over what was learnt (a config reload): episodes, baselines and learning
    /// stay; the state file stays where it was.
    pub fn reconfigure(
        &mut self,
        config: &DetectConfig,
        config_path: &str,
    ) -> Result<(), crate::config::ConfigError> {
        let config = config.normalized();
        self.profiles = rules::Profiles::new(&config.profile, config_path)?;
        self.config = config;
        Ok(())
    }

    /// Starts afresh: no learning, no open alerts (what the live agent did when it started
    /// without a state file).
    pub fn forget(&mut self) {
        self.state = State::default();
        self.restored = None;
    }

    /// The state file's JSON text as it was restored, `None` when detection started afresh:
    /// the journal keeps it, so that a replay starts from the same learning.
    pub fn restored_state(&self) -> Option<&str> {
        self.restored.as_deref()
    }

    /// Writes the state file (atomically, mode 0600) if one is configured.
    pub fn save(&mut self) -> Result<(), StateError> {
        self.dirty = false;
        match &self.state_file {
            Some(path) => state::write(path, &self.state),
            None => Ok(()),
        }
    }

    /// Whether something worth keeping changed since the last save.
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// Takes one interval; returns the alerts raised, grown and resolved by it.
    pub fn observe(&mut self, interval: &Interval) -> Vec<AlertEvent> {
        let traffic = self.traffic(interval);
        let config = &self.config;
        let state = &mut self.state;
        let mut hits = Vec::new();
        if config.burst.enabled {
            hits.extend(state.burst.observe(&config.burst, &traffic));
        }
        if config.lineage.enabled {
            hits.extend(
                state
                    .lineage
                    .observe(&config.lineage, &self.profiles, interval, &traffic),
            );
        }
        if config.new_destination.enabled {
            hits.extend(state.novelty.observe(&config.new_destination, &traffic));
        }
        let (history_hits, hour_ended) =
            state
                .history
                .observe(&config.baseline, &config.slow_leak, &traffic);
        hits.extend(history_hits);
        if config.budget.enabled {
            hits.extend(
                state
                    .budget
                    .observe(&config.budget, &self.profiles, &traffic),
            );
        }
        hits.sort_by(|a, b| {
            (a.kind, &a.service, a.destination).cmp(&(b.kind, &b.service, b.destination))
        });
        let events = state
            .episodes
            .observe(&traffic, hits, config.quiet, config.max_alerts);
        if hour_ended
            || !events
                .iter()
                .all(|e| e.change == crate::api::AlertChange::Updated)
        {
            self.dirty = true;
        }
        events
    }

    /// The alerts raised (open and resolved, at most `max_alerts`), oldest first.
    pub fn alerts(&self, filter: &Filter) -> Vec<AlertRecord> {
        self.state
            .episodes
            .records()
            .filter(|a| filter.keeps(&a.service, &a.kind))
            .take(filter.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect()
    }

    pub fn state_file(&self) -> Option<&Path> {
        self.state_file.as_deref()
    }

    fn traffic<'a>(&self, interval: &'a Interval) -> Traffic<'a> {
        let processes: HashMap<u32, &ProcessInfo> =
            interval.processes.iter().map(|p| (p.pid, p)).collect();
        // Grouped by service, in order of first appearance (each group in record order): the
        // rules look each service up once per interval, not once per flow.
        let mut group_of: HashMap<&str, usize> = HashMap::default();
        let mut groups: Vec<Vec<&FlowInterval>> = Vec::new();
        for flow in interval
            .flows
            .iter()
            .filter(|f| f.bytes_sent > 0 && f.class != DestinationClass::Loopback)
        {
            let group = *group_of.entry(flow.service.as_str()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[group].push(flow);
        }
        let mut names: HashMap<(u32, IpAddr), &str> = HashMap::default();
        let mut names_by_address: HashMap<IpAddr, &str> = HashMap::default();
        for flow in &interval.flows {
            if let (Some(ip), Some(name)) = (flow.destination, &flow.destination_name) {
                names.entry((flow.pid, ip)).or_insert(name);
                names_by_address.entry(ip).or_insert(name);
            }
        }
        let mut flows = Vec::with_capacity(groups.iter().map(Vec::len).sum());
        let mut services = Vec::with_capacity(groups.len());
        for group in groups {
            let begin = flows.len();
            // Profiles are matched once per (service, comm), not once per flow.
            let mut matched: HashMap<&str, (std::rc::Rc<[usize]>, bool)> = HashMap::default();
            for flow in group {
                let (profiles, many_destinations) = matched
                    .entry(flow.comm.as_str())
                    .or_insert_with(|| {
                        let profiles = self.profiles.matching(&flow.service, &flow.comm);
                        let many = self.profiles.expects_many_destinations(&profiles);
                        (profiles.into(), many)
                    })
                    .clone();
                let name = flow.destination_name.as_deref();
                let allowed = flow
                    .destination
                    .is_some_and(|ip| self.profiles.allows(&profiles, ip, flow.class, name));
                let denied = name.is_some_and(|n| self.profiles.denies(&profiles, n).is_some());
                flows.push(Flow {
                    flow,
                    many_destinations,
                    profiles,
                    allowed,
                    denied,
                });
            }
            if let Some(first) = flows.get(begin) {
                services.push((first.flow.service.as_str(), begin..flows.len()));
            }
        }
        Traffic {
            start_ms: interval.start_ms,
            end_ms: interval.end_ms,
            flows,
            services,
            processes,
            names,
            names_by_address,
        }
    }
}

#[cfg(test)]
mod tests;

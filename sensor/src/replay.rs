//! `exfil-sensor replay`: a journal's interval records, in order, through the same detector
//! the live agent runs.
//!
//! With the recorded config, replay does what the live agent did: at each start record it
//! takes that start's config and the detection state the agent restored (or starts afresh
//! like it), so its alerts are the live agent's, ids included. With another config
//! (`--config`), the first start's state is the starting point and detection then runs on
//! through restarts, over destinations classed by that config's networks: what these rules
//! would have seen.
//!
//! `--from`/`--to` choose which alerts are shown (those raised in the range); the records
//! before `--from` still pass through detection, so that learning and baselines are those
//! of the live agent at that time.

use crate::{
    api::{AlertChange, AlertEvent, AlertRecord},
    config::{Config, ConfigError},
    detect::{Detector, parse_rfc3339_ms},
    flow::{
        class::{DestinationClass, Networks},
        interval::Interval,
    },
    journal::{Damage, Entry, Record},
};

/// Which config the rules come from.
pub enum Rules {
    /// Each start record's own.
    Recorded,
    /// This one, from `source` (a path, for messages).
    Given { config: Box<Config>, source: String },
}

pub struct Options {
    pub rules: Rules,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The replay's alerts raised in the range, in their last state, by raise time.
    pub alerts: Vec<AlertRecord>,
    /// The alerts the live agent recorded as raised in the range, in their last state.
    pub live: Vec<AlertRecord>,
    pub records: u64,
    pub intervals: u64,
    /// First and last interval replayed (Unix ms).
    pub span: Option<(u64, u64)>,
    /// What could not be read.
    pub damage: Vec<Damage>,
    /// Interval records met before any start record under `Rules::Recorded` (the journal's
    /// beginning was retired): replayed with the embedded default config.
    pub before_first_start: u64,
}

impl Outcome {
    /// Whether replay's alerts and the live agent's agree on what matters to a responder:
    /// kind, service, destination and bytes of each.
    pub fn agrees_with_live(&self) -> bool {
        let key = |a: &AlertRecord| {
            (
                a.kind.clone(),
                a.service.clone(),
                a.destination.clone(),
                a.bytes,
            )
        };
        let mut ours: Vec<_> = self.alerts.iter().map(key).collect();
        let mut theirs: Vec<_> = self.live.iter().map(key).collect();
        ours.sort();
        theirs.sort();
        ours == theirs
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the journal's start record at {at}: {source}")]
    RecordedConfig { at: String, source: ConfigError },
    #[error("{0}")]
    Config(#[from] ConfigError),
}

/// The detector, and the networks that class destinations under `Rules::Given`.
struct Current {
    detector: Detector,
    networks: Option<Networks>,
}

/// Runs `entries` (a [`crate::journal::Reader`]) through detection. `progress` is called
/// after each entry with the number read so far.
pub fn replay(
    entries: impl Iterator<Item = Entry>,
    options: &Options,
    mut progress: impl FnMut(u64),
) -> Result<Outcome, ReplayError> {
    let mut outcome = Outcome::default();
    let mut current: Option<Current> = None;
    // Whether a start record was met: intervals before it come from a retired beginning.
    let mut started = false;
    let mut ours: std::collections::BTreeMap<u64, AlertRecord> = Default::default();
    let mut live: std::collections::BTreeMap<u64, AlertRecord> = Default::default();
    let in_range = |alert: &AlertRecord| {
        let at = parse_rfc3339_ms(&alert.raised_at).unwrap_or(0);
        options.from_ms.is_none_or(|from| at >= from) && options.to_ms.is_none_or(|to| at < to)
    };
    for (n, entry) in entries.enumerate() {
        progress(n as u64 + 1);
        let record = match entry {
            Entry::Record { record, .. } => record,
            Entry::Damaged(damage) => {
                outcome.damage.push(damage);
                continue;
            }
        };
        outcome.records += 1;
        started |= matches!(record, Record::Start(_));
        match record {
            Record::Start(start) => match &options.rules {
                Rules::Recorded => {
                    let config = Config::parse(&start.config_toml, &start.config_source).map_err(
                        |source| ReplayError::RecordedConfig {
                            at: crate::detect::rfc3339(start.at_ms),
                            source,
                        },
                    )?;
                    let mut detector = detector(&config, &start.config_source)?;
                    restore(&mut detector, start.detect_state.as_deref());
                    current = Some(Current {
                        detector,
                        networks: None,
                    });
                }
                Rules::Given { config, source } => {
                    if current.is_none() {
                        let mut detector = detector(config, source)?;
                        restore(&mut detector, start.detect_state.as_deref());
                        current = Some(Current {
                            detector,
                            networks: Some(Networks::new(&config.networks.internal)),
                        });
                    }
                }
            },
            Record::Config(reload) => {
                // The live agent takes a reloaded config's rules and keeps what it learnt.
                if let Rules::Recorded = options.rules
                    && let Some(now) = &mut current
                {
                    let config = Config::parse(&reload.config_toml, &reload.config_source)
                        .map_err(|source| ReplayError::RecordedConfig {
                            at: crate::detect::rfc3339(reload.at_ms),
                            source,
                        })?;
                    now.detector
                        .reconfigure(&config.detect, &reload.config_source)?;
                }
            }
            Record::Interval(mut interval) => {
                if options.to_ms.is_some_and(|to| interval.start_ms >= to) {
                    continue; // nothing raised past `to` is shown; reading on finds damage
                }
                if !started {
                    outcome.before_first_start += 1;
                }
                let now = match &mut current {
                    Some(now) => now,
                    None => current.insert(first_without_start(&options.rules)?),
                };
                if let Some(networks) = &now.networks {
                    reclassify(&mut interval, networks);
                }
                outcome.intervals += 1;
                let (start, end) = outcome.span.unwrap_or((interval.start_ms, interval.end_ms));
                outcome.span = Some((start.min(interval.start_ms), end.max(interval.end_ms)));
                for event in now.detector.observe(&interval) {
                    keep(&mut ours, event, &in_range);
                }
            }
            Record::Alert(event) => {
                // The live agent's own checks raised it, from nothing in the journal: replay
                // takes it as recorded, so that its ids stay the live agent's.
                if let Some(now) = &mut current
                    && let Some(ours_too) = now.detector.recorded_tamper(&event)
                {
                    keep(&mut ours, ours_too, &in_range);
                }
                keep(&mut live, event, &in_range);
            }
            // The bytes a restart carried over are in the interval after its resume record.
            Record::Process(_) | Record::Stop(_) | Record::Totals(_) | Record::Resume(_) => {}
        }
    }
    outcome.alerts = by_raise_time(ours);
    outcome.live = by_raise_time(live);
    Ok(outcome)
}

fn detector(config: &Config, source: &str) -> Result<Detector, ConfigError> {
    let mut detect = config.detect.clone();
    // Replay never writes the live agent's state file.
    detect.state_file = None;
    Detector::new(&detect, source)
}

/// The live agent's starting state: the one it restored, or none.
fn restore(detector: &mut Detector, state: Option<&str>) {
    match state {
        Some(text) => {
            if let Err(reason) = detector.restore_text(text) {
                // The live agent would have set such a file aside and started afresh too.
                tracing::warn!(
                    "the recorded detection state is unreadable ({reason}); starting afresh"
                );
                detector.forget();
            }
        }
        None => detector.forget(),
    }
}

/// Intervals before any start record (the journal's oldest segments were retired):
/// the given config, or the embedded default.
fn first_without_start(rules: &Rules) -> Result<Current, ReplayError> {
    Ok(match rules {
        Rules::Recorded => {
            let config = Config::parse(crate::config::DEFAULT_TOML, "(embedded default)")?;
            Current {
                detector: detector(&config, "(embedded default)")?,
                networks: None,
            }
        }
        Rules::Given { config, source } => Current {
            detector: detector(config, source)?,
            networks: Some(Networks::new(&config.networks.internal)),
        },
    })
}

/// Destinations classed by another config's networks (loopback and the other row stay).
fn reclassify(interval: &mut Interval, networks: &Networks) {
    for flow in &mut interval.flows {
        if !matches!(
            flow.class,
            DestinationClass::Other | DestinationClass::Loopback
        ) {
            flow.class = networks.classify(flow.destination);
        }
    }
}

/// Keeps an alert's last state, if it was raised in the range.
fn keep(
    alerts: &mut std::collections::BTreeMap<u64, AlertRecord>,
    event: AlertEvent,
    in_range: &impl Fn(&AlertRecord) -> bool,
) {
    if event.change == AlertChange::Raised && !in_range(&event.alert) {
        return;
    }
    if event.change != AlertChange::Raised && !alerts.contains_key(&event.alert.id) {
        return; // an alert raised before the range (or before the journal began)
    }
    alerts.insert(event.alert.id, event.alert);
}

fn by_raise_time(alerts: std::collections::BTreeMap<u64, AlertRecord>) -> Vec<AlertRecord> {
    let mut alerts: Vec<AlertRecord> = alerts.into_values().collect();
    alerts.sort_by(|a, b| a.raised_at.cmp(&b.raised_at).then(a.id.cmp(&b.id)));
    alerts
}

#[cfg(test)]
mod tests;

//! The first poll of a run: what the pinned maps' totals are compared with. With a journal,
//! its last totals per flow key are the baseline: the kernel's bytes beyond them (counted
//! while no agent ran, or in the interval the previous agent died in) were never journaled
//! nor seen by detection, so they come as new bytes in the first interval. Without one,
//! nothing tells old bytes from new: every pinned total is taken as accounted for.

use std::{collections::HashMap, time::SystemTime};

use sensor_common::{FlowCounters, FlowKey};

use crate::{
    flow::{
        FlowTable,
        flows::Adopted,
        identity::ProcessSource,
        interval::{Direction, Protocol, unix_ms},
    },
    journal::{
        Counts, FlowId, JournalConfig, LastTotals, PreviousRun, ResumeRecord, ResumedFlow,
        last_totals,
    },
    kernel::KernelSums,
};

/// What a run starts from, read before its journal is opened for writing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Baseline {
    /// No journal (disabled): pinned totals are all taken as accounted for.
    #[default]
    None,
    /// The journal's last totals; `None` for a new or empty journal.
    Journal(Option<LastTotals>),
}

impl Baseline {
    /// The journal's last totals when `[journal]` is enabled. A journal that cannot be read
    /// is logged, and the pinned totals are then taken as accounted for.
    pub fn read(config: &JournalConfig) -> Self {
        if !config.enabled {
            return Self::None;
        }
        match last_totals(&config.dir) {
            Ok(totals) => Self::Journal(totals),
            Err(e) => {
                tracing::error!(
                    "{}; the pinned kernel totals are taken as accounted for",
                    crate::error_chain(&e)
                );
                Self::Journal(None)
            }
        }
    }

    fn previous(&self) -> PreviousRun {
        match self {
            Self::Journal(Some(totals)) => totals.previous,
            _ => PreviousRun::None,
        }
    }

    /// Per key, what the journal accounted for: zeros for a key it never counted. `None`
    /// when there is nothing to compare with.
    fn known(&self) -> Option<&HashMap<FlowId, Counts>> {
        match self {
            Self::Journal(Some(totals)) => totals.flows.as_ref(),
            _ => None,
        }
    }
}

/// Takes the kernel's totals over at the first poll (`pinned`: of maps an earlier agent left
/// pinned; else the maps are new and every byte in them is this run's), logs one line of
/// what was carried over, and returns the resume record for the journal.
pub fn resume(
    flows: &mut FlowTable,
    baseline: &Baseline,
    now: SystemTime,
    pinned: Option<&KernelSums>,
    source: &dyn ProcessSource,
) -> ResumeRecord {
    let previous = baseline.previous();
    let Some(sums) = pinned else {
        return ResumeRecord {
            at_ms: unix_ms(now),
            previous,
            flows: Vec::new(),
        };
    };
    let known = baseline.known();
    let journaled = |key: &FlowKey| -> Option<FlowCounters> {
        let known = known?;
        Some(
            known
                .get(&flow_id(key))
                .map_or_else(FlowCounters::default, to_kernel),
        )
    };
    let adopted = flows.adopt(now, &sums.flows, &sums.flow_overflow, source, &journaled);
    let record = ResumeRecord {
        at_ms: unix_ms(now),
        previous,
        flows: adopted.iter().map(resumed).collect(),
    };
    log(&record, baseline);
    record
}

/// The one line a restart logs: bytes new since the journal's last totals, bytes taken as
/// accounted for, and how the previous run ended.
fn log(record: &ResumeRecord, baseline: &Baseline) {
    let (mut carried_bytes, mut carried_flows, mut adopted_bytes, mut adopted_flows) =
        (0u64, 0u64, 0u64, 0u64);
    for flow in &record.flows {
        match flow.journaled {
            Some(_) => {
                let carried = flow.carried();
                if carried != Counts::default() {
                    carried_bytes += carried.sent;
                    carried_flows += 1;
                }
            }
            None => {
                adopted_bytes += flow.kernel.sent;
                adopted_flows += 1;
            }
        }
    }
    let why = match baseline {
        Baseline::None => "no journal",
        Baseline::Journal(None) => "the journal is new",
        Baseline::Journal(Some(t)) if t.flows.is_none() => "the journal holds no totals",
        Baseline::Journal(Some(_)) => "the journal's last totals",
    };
    let previous = match record.previous {
        PreviousRun::None => "unknown".to_owned(),
        PreviousRun::Stopped { at_ms } => format!("stopped at {}", crate::detect::rfc3339(at_ms)),
        PreviousRun::Unclean { last_at_ms } => format!(
            "ended without a stop record; its last record at {}",
            crate::detect::rfc3339(last_at_ms)
        ),
    };
    tracing::info!(
        previous_run = previous,
        "pinned kernel totals taken over ({why}): {carried_bytes} bytes sent across \
         {carried_flows} flows beyond the journal's last totals, new in the first interval; \
         {adopted_bytes} bytes sent across {adopted_flows} flows carried over as accounted for"
    );
}

fn resumed(a: &Adopted) -> ResumedFlow {
    ResumedFlow {
        key: flow_id(&a.key),
        kernel: counts(&a.kernel),
        journaled: a.journaled.as_ref().map(counts),
    }
}

pub fn flow_id(key: &FlowKey) -> FlowId {
    FlowId {
        tgid: key.tgid,
        destination: crate::flow::destination(key),
        port: key.port,
        protocol: Protocol::from_kernel(key.protocol),
        direction: Direction::from_kernel(key.direction),
    }
}

pub fn counts(c: &FlowCounters) -> Counts {
    Counts {
        sent: c.sent,
        sends: c.sends,
        received: c.received,
        recvs: c.recvs,
    }
}

fn to_kernel(c: &Counts) -> FlowCounters {
    FlowCounters {
        sent: c.sent,
        sends: c.sends,
        received: c.received,
        recvs: c.recvs,
    }
}

#[cfg(test)]
mod tests;

//! What `/healthz` answers, kept current: the probes as attached at start, those the tamper
//! checks have since found detached and could not attach again, and whether the poll thread
//! still hands reads to the aggregator. 200 while every required probe is attached and polls
//! come; 503 with the reasons otherwise (a service manager's or a load balancer's check, as
//! node_exporter's and Tetragon's health endpoints serve).

use std::{
    collections::BTreeSet,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::kernel::{ProbeState, ProbeStatus};

/// A poll that has not completed for this many poll intervals (and at least [`STALE_MIN`])
/// means the agent has stopped counting: its poll thread is stuck or gone.
pub const STALE_POLLS: u32 = 10;
pub const STALE_MIN: Duration = Duration::from_secs(30);

pub struct Health {
    probes: Vec<ProbeStatus>,
    stale_after: Duration,
    live: Mutex<Live>,
}

#[derive(Default)]
struct Live {
    last_poll: Option<Instant>,
    /// Found detached by the last tamper check and not attached again.
    detached: BTreeSet<&'static str>,
}

impl Health {
    pub fn new(probes: Vec<ProbeStatus>, poll_interval: Duration) -> Self {
        Self {
            probes,
            stale_after: (poll_interval * STALE_POLLS).max(STALE_MIN),
            live: Mutex::new(Live::default()),
        }
    }

    /// A poll's read reached the aggregator at `at`.
    pub fn polled(&self, at: Instant) {
        self.live().last_poll = Some(at);
    }

    /// The probes the last tamper check found detached and could not attach again (all of
    /// them: one repaired since is no longer in the set).
    pub fn detached(&self, probes: BTreeSet<&'static str>) {
        self.live().detached = probes;
    }

    /// Whether the agent is healthy at `now`, and the text that says why.
    pub fn answer(&self, now: Instant) -> (bool, String) {
        let live = self.live();
        let Some(last_poll) = live.last_poll else {
            return (false, "starting\n".to_owned());
        };
        let mut healthy = true;
        let mut reasons = String::new();
        for p in &self.probes {
            let kind = if p.required { "required" } else { "optional" };
            let why = match &p.state {
                ProbeState::Skipped(reason) => reason.clone(),
                ProbeState::Attached if live.detached.contains(p.probe) => {
                    "found detached and not attached again (see the tamper alert)".to_owned()
                }
                ProbeState::Attached => continue,
            };
            healthy &= !p.required;
            reasons.push_str(&format!("{} ({kind}) not attached: {why}\n", p.probe));
        }
        let since = now.saturating_duration_since(last_poll);
        if since > self.stale_after {
            healthy = false;
            reasons.push_str(&format!(
                "no poll for {} s (at most {} s allowed): the agent is not counting\n",
                since.as_secs(),
                self.stale_after.as_secs()
            ));
        }
        if healthy {
            (true, format!("ok\n{reasons}"))
        } else {
            (false, reasons)
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        // Nothing is left half-written under this lock: a panic elsewhere leaves it usable.
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(name: &'static str, required: bool, attached: bool) -> ProbeStatus {
        ProbeStatus {
            probe: name,
            required,
            state: if attached {
                ProbeState::Attached
            } else {
                ProbeState::Skipped("no cgroup2".into())
            },
        }
    }

    fn polled(probes: Vec<ProbeStatus>, at: Instant) -> Health {
        let health = Health::new(probes, Duration::from_secs(1));
        health.polled(at);
        health
    }

    #[test]
    fn starting_until_the_first_poll() {
        let health = Health::new(vec![probe("a", true, true)], Duration::from_secs(1));
        assert_eq!(
            health.answer(Instant::now()),
            (false, "starting\n".to_owned())
        );
        let now = Instant::now();
        health.polled(now);
        assert_eq!(health.answer(now), (true, "ok\n".to_owned()));
    }

    #[test]
    fn follows_required_probes_skipped_at_start() {
        let now = Instant::now();
        let answer = |probes| polled(probes, now).answer(now);
        assert_eq!(
            answer(vec![probe("a", true, true), probe("b", false, true)]),
            (true, "ok\n".to_owned())
        );
        assert_eq!(
            answer(vec![probe("a", true, true), probe("b", false, false)]),
            (
                true,
                "ok\nb (optional) not attached: no cgroup2\n".to_owned()
            )
        );
        assert_eq!(
            answer(vec![probe("a", true, false), probe("b", false, true)]),
            (false, "a (required) not attached: no cgroup2\n".to_owned())
        );
    }

    #[test]
    fn a_probe_found_detached_counts_until_it_is_attached_again() {
        let now = Instant::now();
        let health = polled(vec![probe("a", true, true), probe("b", false, true)], now);
        health.detached(BTreeSet::from(["b"]));
        assert_eq!(
            health.answer(now),
            (
                true,
                "ok\nb (optional) not attached: found detached and not attached again (see \
                 the tamper alert)\n"
                    .to_owned()
            )
        );
        health.detached(BTreeSet::from(["a"]));
        assert_eq!(
            health.answer(now),
            (
                false,
                "a (required) not attached: found detached and not attached again (see the \
                 tamper alert)\n"
                    .to_owned()
            )
        );
        health.detached(BTreeSet::new());
        assert_eq!(health.answer(now), (true, "ok\n".to_owned()));
    }

    #[test]
    fn polls_that_stop_coming_are_unhealthy_past_ten_intervals_or_thirty_seconds() {
        let start = Instant::now();
        let health = polled(vec![probe("a", true, true)], start);
        // A 1 s interval: 30 s is the floor.
        assert_eq!(
            health.answer(start + Duration::from_secs(30)),
            (true, "ok\n".to_owned())
        );
        assert_eq!(
            health.answer(start + Duration::from_millis(30_001)),
            (
                false,
                "no poll for 30 s (at most 30 s allowed): the agent is not counting\n".to_owned()
            )
        );
        health.polled(start + Duration::from_secs(31));
        assert_eq!(
            health.answer(start + Duration::from_secs(32)),
            (true, "ok\n".to_owned())
        );
        // A 10 s interval: ten of them.
        let slow = Health::new(vec![probe("a", true, true)], Duration::from_secs(10));
        slow.polled(start);
        assert!(slow.answer(start + Duration::from_secs(100)).0);
        assert!(!slow.answer(start + Duration::from_secs(101)).0);
    }
}

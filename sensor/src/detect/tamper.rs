//! `tamper` alerts. No traffic rule raises them: the agent's own checks do, each poll, when
//! its kernel side was changed under it (a probe detached, a pin removed) or its journal
//! stopped taking records. They go the way of every alert: the API, the sinks, the journal,
//! `exfil_sensor_alerts_total{kind="tamper"}`.

use super::{Detector, Hit, Kind, Sender};
use crate::api::AlertEvent;

/// The service of `tamper` alerts: the agent itself.
pub const SERVICE: &str = "exfil-sensor";

/// Something that changed the agent's view or record of what the host sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tamper {
    /// What was removed or failed, as the alert names it (`probe sock:sock_send_length`,
    /// `pin of map FLOWS`, `journal /var/lib/exfil-sensor/journal`): one open alert each.
    pub subject: String,
    pub summary: String,
    pub description: String,
}

impl Detector {
    /// Raises a `tamper` alert for `tamper`, found at `now_ms` by the agent `pid`; the same
    /// subject found again while its alert is open updates that alert. Resolved after the
    /// quiet period, like a service-wide alert.
    pub fn tamper(&mut self, tamper: &Tamper, now_ms: u64, pid: u32) -> AlertEvent {
        let hit = Hit {
            kind: Kind::Tamper,
            service: SERVICE.to_owned(),
            destination: None,
            per_destination: false,
            sender: Sender {
                pid,
                comm: SERVICE.to_owned(),
                port: 0,
                bytes: 0,
            },
            bytes: 0,
            growth: 0,
            window_s: 0,
            started_ms: now_ms,
            class: None,
            summary: tamper.summary.clone(),
            description: tamper.description.clone(),
        };
        self.dirty = true;
        self.state.episodes.event(hit, &tamper.subject, now_ms)
    }
}

impl Detector {
    /// Takes a `tamper` alert change the live agent recorded (replay): see
    /// [`super::episodes::Episodes::recorded`].
    pub fn recorded_tamper(&mut self, event: &AlertEvent) -> Option<AlertEvent> {
        if event.alert.kind != Kind::Tamper.as_str() {
            return None;
        }
        self.state.episodes.recorded(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{AlertChange, Filter},
        detect::DetectConfig,
    };

    fn tamper(subject: &str) -> Tamper {
        Tamper {
            subject: subject.to_owned(),
            summary: format!("{subject} was removed"),
            description: "what the agent did".to_owned(),
        }
    }

    #[test]
    fn one_alert_per_subject_while_open_then_resolved_after_the_quiet_period() {
        let config = DetectConfig::default();
        let quiet_ms = u64::try_from(config.quiet.as_millis()).expect("ms");
        let mut detector = Detector::new(&config, "test").expect("detector");
        let t0 = 1_700_000_000_000;
        let first = detector.tamper(&tamper("probe sock:sock_send_length"), t0, 4242);
        assert_eq!(first.change, AlertChange::Raised);
        assert_eq!(first.alert.kind, "tamper");
        assert_eq!(first.alert.severity, "critical");
        assert_eq!(first.alert.service, "exfil-sensor");
        assert_eq!(first.alert.pid, 4242);
        assert_eq!(first.alert.destination, "*");
        assert_eq!(
            first.alert.summary,
            "probe sock:sock_send_length was removed"
        );
        // Found again while open: the same alert, updated.
        let again = detector.tamper(&tamper("probe sock:sock_send_length"), t0 + 1_000, 4242);
        assert_eq!(again.change, AlertChange::Updated);
        assert_eq!(again.alert.id, first.alert.id);
        // Another subject: an alert of its own.
        let map = detector.tamper(&tamper("pin of map FLOWS"), t0 + 2_000, 4242);
        assert_eq!(map.change, AlertChange::Raised);
        assert_ne!(map.alert.id, first.alert.id);
        assert_eq!(detector.alerts(&Filter::default()).len(), 2);

        // An interval with no traffic, past the quiet period: both resolved.
        let interval = crate::flow::interval::Interval {
            start_ms: t0 + quiet_ms,
            end_ms: t0 + 2_000 + quiet_ms,
            flows: Vec::new(),
            files: Vec::new(),
            processes: Vec::new(),
        };
        let events = detector.observe(&interval);
        let mut resolved: Vec<u64> = events
            .iter()
            .filter(|e| e.change == AlertChange::Resolved)
            .map(|e| e.alert.id)
            .collect();
        resolved.sort_unstable();
        assert_eq!(resolved, vec![first.alert.id, map.alert.id]);
        // Found once more after: a new alert.
        let later = detector.tamper(
            &tamper("probe sock:sock_send_length"),
            t0 + 3_000 + quiet_ms,
            4242,
        );
        assert_eq!(later.change, AlertChange::Raised);
    }
}

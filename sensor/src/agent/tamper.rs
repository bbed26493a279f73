//! What the poll thread found tampered with, turned into a `tamper` alert and the health
//! metrics it moves.

use std::time::SystemTime;

use super::Aggregator;
use crate::{detect::tamper::Tamper, flow::interval::unix_ms};

/// One thing the tamper checks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TamperReport {
    pub now: SystemTime,
    pub tamper: Tamper,
    /// A probe that stopped: `exfil_sensor_probe_attached{probe}` goes to 0 ...
    pub detached_probe: Option<&'static str>,
    /// ... and back to 1 when this repair (its `exfil_sensor_tamper_repairs_total{what}`
    /// label) succeeded.
    pub repaired: Option<&'static str>,
}

impl Aggregator {
    /// Raises (or updates) the report's `tamper` alert through the normal alert path — the
    /// API, the sinks, the journal, `exfil_sensor_alerts_total` — and moves the probe and
    /// repair metrics.
    pub fn tamper(&mut self, report: &TamperReport) {
        if let Some(probe) = report.detached_probe {
            self.metrics.set_probe_attached(probe, false);
        }
        // The poll thread logged the finding; the alert goes out as every other does.
        let event = self
            .detector
            .tamper(&report.tamper, unix_ms(report.now), std::process::id());
        self.publish(event);
        if let Some(what) = report.repaired {
            self.metrics.tamper_repaired(what);
            if let Some(probe) = report.detached_probe {
                self.metrics.set_probe_attached(probe, true);
            }
        }
        self.save_detection(false);
    }
}

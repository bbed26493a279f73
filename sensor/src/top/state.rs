//! What `exfil-sensor top` shows, computed from successive `/api/v1/services` answers: the
//! agent serves exact totals since it started, and a rate is the difference of two of them
//! over the time between. Pure: the terminal loop feeds samples and their arrival instants.

use std::{collections::VecDeque, time::Instant};

use crate::api::ServiceRecord;

/// Samples of sent/s kept per service for its sparkline: a minute at one sample a second.
pub const HISTORY_LEN: usize = 60;

/// A total since the agent started and how fast it grew since the previous sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counter {
    pub total: u64,
    /// Bytes per second; `None` on the first sample and after a total went down.
    pub rate: Option<f64>,
}

impl Counter {
    /// `total` now, given the same counter's value `elapsed_s` seconds ago (if any).
    fn advance(previous: Option<Counter>, total: u64, elapsed_s: Option<f64>) -> Self {
        let rate = match (previous, elapsed_s) {
            // A total that went down means the agent restarted without its pinned maps and
            // counts from zero again: what it counted before is gone, so the rate starts over
            // from this sample rather than showing a negative or a guess.
            (Some(previous), Some(elapsed)) if total >= previous.total && elapsed > 0.0 => {
                Some((total - previous.total) as f64 / elapsed)
            }
            _ => None,
        };
        Self { total, rate }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DestinationView {
    pub destination: String,
    /// Its DNS name, when the agent's rows have one.
    pub name: Option<String>,
    pub class: String,
    pub sent: Counter,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceView {
    pub service: String,
    pub sent: Counter,
    pub received: Counter,
    pub read: Counter,
    /// Sent/s of the last `HISTORY_LEN` samples, oldest first (`None`: no rate then).
    pub history: VecDeque<Option<f64>>,
    /// As the agent ordered them: most bytes sent first.
    pub destinations: Vec<DestinationView>,
}

#[derive(Debug, Default)]
pub struct TopState {
    /// Most sent/s first, then most sent in total, then by name.
    services: Vec<ServiceView>,
    last_sample_at: Option<Instant>,
    /// Why the last request failed; cleared by the next answer.
    error: Option<String>,
    /// By name, so that the cursor stays on its service when the order changes.
    selected: Option<String>,
}

impl TopState {
    /// One answer of `/api/v1/services`, received at `at`.
    pub fn observe(&mut self, records: Vec<ServiceRecord>, at: Instant) {
        let elapsed_s = self
            .last_sample_at
            .map(|before| at.saturating_duration_since(before).as_secs_f64());
        let mut previous: Vec<ServiceView> = std::mem::take(&mut self.services);
        self.services = records
            .into_iter()
            .map(|record| {
                let before = previous
                    .iter()
                    .position(|s| s.service == record.service)
                    .map(|i| previous.swap_remove(i));
                service_view(record, before, elapsed_s)
            })
            .collect();
        self.services.sort_by(|a, b| {
            b.sent
                .rate
                .unwrap_or(0.0)
                .total_cmp(&a.sent.rate.unwrap_or(0.0))
                .then(b.sent.total.cmp(&a.sent.total))
                .then_with(|| a.service.cmp(&b.service))
        });
        self.last_sample_at = Some(at);
        self.error = None;
    }

    /// A request that failed: shown until the next answer; the last numbers stay.
    pub fn fail(&mut self, error: String) {
        self.error = Some(error);
    }

    pub fn services(&self) -> &[ServiceView] {
        &self.services
    }

    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Sent/s, received/s and read/s of all services together (`None` until any is known).
    pub fn total_rates(&self) -> [Option<f64>; 3] {
        let sum = |rate: fn(&ServiceView) -> Option<f64>| {
            self.services
                .iter()
                .filter_map(rate)
                .fold(None, |sum, r| Some(sum.unwrap_or(0.0) + r))
        };
        [
            sum(|s| s.sent.rate),
            sum(|s| s.received.rate),
            sum(|s| s.read.rate),
        ]
    }

    /// The row under the cursor: the selected service, else the first.
    pub fn selected_index(&self) -> Option<usize> {
        if self.services.is_empty() {
            return None;
        }
        let by_name = self
            .selected
            .as_ref()
            .and_then(|name| self.services.iter().position(|s| &s.service == name));
        Some(by_name.unwrap_or(0))
    }

    pub fn selected_service(&self) -> Option<&ServiceView> {
        self.selected_index().and_then(|i| self.services.get(i))
    }

    pub fn select_next(&mut self) {
        self.move_selection(1);
    }

    pub fn select_previous(&mut self) {
        self.move_selection(-1);
    }

    fn move_selection(&mut self, step: isize) {
        let Some(current) = self.selected_index() else {
            return;
        };
        let last = self.services.len().saturating_sub(1);
        let next = current.saturating_add_signed(step).min(last);
        self.selected = self.services.get(next).map(|s| s.service.clone());
    }
}

fn service_view(
    record: ServiceRecord,
    before: Option<ServiceView>,
    elapsed_s: Option<f64>,
) -> ServiceView {
    let sent = Counter::advance(
        before.as_ref().map(|b| b.sent),
        record.bytes_sent,
        elapsed_s,
    );
    let received = Counter::advance(
        before.as_ref().map(|b| b.received),
        record.bytes_received,
        elapsed_s,
    );
    let read = Counter::advance(
        before.as_ref().map(|b| b.read),
        record.bytes_read,
        elapsed_s,
    );
    let destinations = record
        .destinations
        .into_iter()
        .map(|d| {
            // A destination that just entered the agent's top list has no earlier total here.
            let earlier = before.as_ref().and_then(|b| {
                b.destinations
                    .iter()
                    .find(|e| e.destination == d.destination)
                    .map(|e| e.sent)
            });
            DestinationView {
                sent: Counter::advance(earlier, d.bytes_sent, elapsed_s),
                destination: d.destination,
                name: d.destination_name,
                class: d.class,
            }
        })
        .collect();
    let mut history = before.map(|b| b.history).unwrap_or_default();
    if history.len() == HISTORY_LEN {
        history.pop_front();
    }
    history.push_back(sent.rate);
    ServiceView {
        service: record.service,
        sent,
        received,
        read,
        history,
        destinations,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::DestinationRecord;

    fn service(name: &str, sent: u64, received: u64, read: u64) -> ServiceRecord {
        ServiceRecord {
            service: name.into(),
            bytes_sent: sent,
            bytes_received: received,
            bytes_read: read,
            flows: 1,
            destinations: vec![DestinationRecord {
                destination: "198.51.100.2".into(),
                destination_name: None,
                class: "external".into(),
                bytes_sent: sent,
                bytes_received: received,
            }],
        }
    }

    fn rates(state: &TopState, name: &str) -> (Option<f64>, Option<f64>, Option<f64>) {
        let s = state
            .services()
            .iter()
            .find(|s| s.service == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        (s.sent.rate, s.received.rate, s.read.rate)
    }

    #[test]
    fn first_sample_has_no_rate_then_rates_are_differences_over_time() {
        let t0 = Instant::now();
        let mut state = TopState::default();
        state.observe(vec![service("a", 1000, 10, 0)], t0);
        assert_eq!(rates(&state, "a"), (None, None, None));
        assert_eq!(state.total_rates(), [None, None, None]);

        state.observe(
            vec![service("a", 3000, 10, 500)],
            t0 + Duration::from_secs(2),
        );
        assert_eq!(rates(&state, "a"), (Some(1000.0), Some(0.0), Some(250.0)));
        let dest = &state.services()[0].destinations[0];
        assert_eq!(
            dest.sent,
            Counter {
                total: 3000,
                rate: Some(1000.0)
            }
        );
        assert_eq!(state.services()[0].history, [None, Some(1000.0)]);
    }

    #[test]
    fn a_total_that_went_down_restarts_the_rate() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut state = TopState::default();
        state.observe(vec![service("a", 5000, 0, 0)], t0);
        state.observe(vec![service("a", 6000, 0, 0)], t0 + second);
        assert_eq!(rates(&state, "a").0, Some(1000.0));
        // The agent restarted and counts from zero.
        state.observe(vec![service("a", 200, 0, 0)], t0 + second * 2);
        assert_eq!(rates(&state, "a").0, None);
        assert_eq!(state.services()[0].destinations[0].sent.rate, None);
        state.observe(vec![service("a", 700, 0, 0)], t0 + second * 3);
        assert_eq!(rates(&state, "a").0, Some(500.0));
        assert_eq!(
            state.services()[0].history,
            [None, Some(1000.0), None, Some(500.0)]
        );
    }

    #[test]
    fn history_keeps_the_last_minute() {
        let t0 = Instant::now();
        let mut state = TopState::default();
        for i in 0..100_u64 {
            state.observe(vec![service("a", i * i, 0, 0)], t0 + Duration::from_secs(i));
        }
        let history = &state.services()[0].history;
        assert_eq!(history.len(), HISTORY_LEN);
        // Rate between i-1 and i is i² - (i-1)² = 2i - 1.
        assert_eq!(history.back().copied().flatten(), Some(197.0));
        assert_eq!(history.front().copied().flatten(), Some(79.0));
    }

    #[test]
    fn services_sort_by_rate_then_total_and_selection_follows_its_service() {
        let t0 = Instant::now();
        let mut state = TopState::default();
        state.observe(
            vec![
                service("a", 0, 0, 0),
                service("b", 100, 0, 0),
                service("c", 50, 0, 0),
            ],
            t0,
        );
        let names = |s: &TopState| -> Vec<String> {
            s.services().iter().map(|v| v.service.clone()).collect()
        };
        // No rates yet: by total.
        assert_eq!(names(&state), ["b", "c", "a"]);
        assert_eq!(state.selected_index(), Some(0));
        state.select_next();
        assert_eq!(
            state.selected_service().map(|s| s.service.as_str()),
            Some("c")
        );

        state.observe(
            vec![
                service("a", 9000, 0, 0),
                service("b", 100, 0, 0),
                service("c", 60, 0, 0),
            ],
            t0 + Duration::from_secs(1),
        );
        assert_eq!(names(&state), ["a", "c", "b"]);
        assert_eq!(
            state.selected_service().map(|s| s.service.as_str()),
            Some("c")
        );
        state.select_next();
        state.select_next();
        assert_eq!(state.selected_index(), Some(2));
        state.select_previous();
        state.select_previous();
        state.select_previous();
        assert_eq!(state.selected_index(), Some(0));
        assert_eq!(state.total_rates()[0], Some(9010.0));
    }

    #[test]
    fn an_error_is_kept_until_the_next_answer() {
        let t0 = Instant::now();
        let mut state = TopState::default();
        state.fail("cannot reach the agent".into());
        assert_eq!(state.error(), Some("cannot reach the agent"));
        assert_eq!(state.selected_index(), None);
        state.select_next();
        state.observe(vec![service("a", 1, 0, 0)], t0);
        assert_eq!(state.error(), None);
    }
}

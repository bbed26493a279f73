//! Each rule on synthetic interval streams: fires exactly at the interval that crosses its
//! threshold, not one earlier; benign shapes stay silent.

use super::*;
use crate::{api::AlertChange, flow::interval::FileInterval};

const MIB: u64 = 1 << 20;
/// Monday 2026-11-23 00:00:00 UTC, in ms.
const MONDAY: u64 = 1_795_392_000_000;
const HOUR: u64 = 3_600_000;

fn send(service: &str, pid: u32, comm: &str, to: &str, bytes: u64) -> FlowInterval {
    FlowInterval::sample(service, pid, comm, to, bytes)
}

fn read(
    service: &str,
    pid: u32,
    comm: &str,
    class: &str,
    file: (u64, u64),
    bytes: u64,
) -> FileInterval {
    FileInterval {
        service: service.into(),
        pid,
        comm: comm.into(),
        path: Some(format!("/data/{}", file.1)),
        class: class.into(),
        device: file.0,
        inode: file.1,
        bytes_read: bytes,
        reads: 1,
        bytes_written: 0,
        writes: 0,
    }
}

fn write(service: &str, pid: u32, comm: &str, file: (u64, u64), bytes: u64) -> FileInterval {
    FileInterval {
        bytes_read: 0,
        reads: 0,
        bytes_written: bytes,
        writes: 1,
        class: "other".into(),
        ..read(service, pid, comm, "other", file, 0)
    }
}

fn process(
    pid: u32,
    comm: &str,
    service: &str,
    session: Option<u32>,
    ancestors: &[u32],
) -> ProcessInfo {
    ProcessInfo {
        pid,
        comm: comm.into(),
        exe: format!("/usr/bin/{comm}"),
        service: service.into(),
        session,
        ancestors: ancestors.to_vec(),
    }
}

/// Feeds intervals of `length` ms from `start`, one after the other.
struct Feed {
    detector: Detector,
    at: u64,
    length: u64,
    events: Vec<AlertEvent>,
}

impl Feed {
    fn new(config: DetectConfig, start: u64, length: u64) -> Self {
        Self {
            detector: Detector::new(&config, "test").expect("config"),
            at: start,
            length,
            events: Vec::new(),
        }
    }

    fn with_defaults() -> Self {
        let config = DetectConfig {
            state_file: None,
            ..DetectConfig::default()
        };
        Self::new(config, MONDAY, 10_000)
    }

    /// One interval; returns its events.
    fn step(
        &mut self,
        flows: Vec<FlowInterval>,
        files: Vec<FileInterval>,
        processes: Vec<ProcessInfo>,
    ) -> Vec<AlertEvent> {
        let interval = Interval {
            start_ms: self.at,
            end_ms: self.at + self.length,
            flows,
            files,
            processes,
        };
        self.at += self.length;
        let events = self.detector.observe(&interval);
        self.events.extend(events.clone());
        events
    }

    /// An interval of file reads and writes by `processes`.
    fn files(&mut self, files: Vec<FileInterval>, processes: &[ProcessInfo]) -> Vec<AlertEvent> {
        self.step(Vec::new(), files, processes.to_vec())
    }

    /// An interval of sends by `processes`.
    fn sends(&mut self, flows: Vec<FlowInterval>, processes: &[ProcessInfo]) -> Vec<AlertEvent> {
        self.step(flows, Vec::new(), processes.to_vec())
    }

    fn flows(&mut self, flows: Vec<FlowInterval>) -> Vec<AlertEvent> {
        self.step(flows, Vec::new(), Vec::new())
    }

    fn idle(&mut self, intervals: usize) -> Vec<AlertEvent> {
        (0..intervals)
            .flat_map(|_| self.flows(Vec::new()))
            .collect()
    }

    fn raised(&self) -> Vec<&AlertRecord> {
        self.events
            .iter()
            .filter(|e| e.change == AlertChange::Raised)
            .map(|e| &e.alert)
            .collect()
    }
}

fn raised(events: &[AlertEvent]) -> Vec<&AlertRecord> {
    events
        .iter()
        .filter(|e| e.change == AlertChange::Raised)
        .map(|e| &e.alert)
        .collect()
}

mod budget;
mod burst;
mod history;
mod lineage;
mod names;
mod state;

//! Alert latency: how long after a burst crosses its threshold the alert is in the API.
//!
//! Each trial starts the release agent on the default interval (10 s) with fresh maps and a
//! fresh detection state, waits a different fraction of an interval, then sends exactly the
//! burst threshold (50 MiB) to the namespace host in one go, and polls `/api/v1/alerts` on
//! the API socket every 20 ms until the `burst` is there. The trials' phases cover the
//! interval, so the slowest trial is close to the worst case: a threshold crossed just after
//! an interval began.

use std::{
    io::Write as _,
    os::unix::net::UnixStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{NS, PEER_IP, PIN_DIR, http_get, start_sensor, stop};

const API: &str = "/tmp/exfil-bench-latency.sock";
/// The default `[detect.burst]` threshold.
const THRESHOLD: u64 = 50 << 20;
/// The default `agent.interval`.
pub const INTERVAL: Duration = Duration::from_secs(10);
const SINK_PORT: u16 = 5301;

/// What the trials measured.
pub struct Latency {
    /// (phase into the interval at which the upload started, seconds to the alert).
    pub trials: Vec<(Duration, f64)>,
}

impl Latency {
    pub fn slowest(&self) -> f64 {
        self.trials.iter().map(|t| t.1).fold(0.0, f64::max)
    }

    pub fn median(&self) -> f64 {
        let mut all: Vec<f64> = self.trials.iter().map(|t| t.1).collect();
        all.sort_by(f64::total_cmp);
        all.get(all.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

pub fn run(trials: u32) -> anyhow::Result<Latency> {
    let _sink = Sink::start()?;
    let mut out = Vec::new();
    for trial in 0..trials {
        let phase = INTERVAL * trial / trials + Duration::from_millis(300);
        let seconds = trial_once(phase)?;
        println!(
            "bench: alert latency, upload {:.1} s into an interval: {seconds:.2} s",
            phase.as_secs_f64()
        );
        out.push((phase, seconds));
    }
    Ok(Latency { trials: out })
}

fn trial_once(phase: Duration) -> anyhow::Result<f64> {
    let _ = std::fs::remove_dir_all(PIN_DIR);
    let mut child = start_sensor("latency", &format!("http.api_socket = \"{API}\"\n"))?;
    let result = (|| {
        // The first interval starts when the agent has attached, just before it is healthy.
        let started = Instant::now();
        std::thread::sleep(phase);
        let mut conn = std::net::TcpStream::connect((PEER_IP, SINK_PORT))
            .context("connecting to the namespace sink")?;
        let chunk = vec![0x6b_u8; 1 << 20];
        for _ in 0..THRESHOLD / chunk.len() as u64 {
            conn.write_all(&chunk)?;
        }
        // The last byte of the threshold has been handed to TCP: the burst is due.
        let crossed = Instant::now();
        drop(conn);
        let deadline = crossed + INTERVAL * 3;
        loop {
            let alerts = get_alerts()?;
            if alerts.contains("\"kind\":\"burst\"") {
                return Ok(crossed.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                bail!(
                    "no burst alert {} s after sending {THRESHOLD} bytes ({:.1} s after start)",
                    (INTERVAL * 3).as_secs(),
                    started.elapsed().as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })();
    stop(&mut child);
    let _ = std::fs::remove_dir_all(PIN_DIR);
    result
}

fn get_alerts() -> anyhow::Result<String> {
    let mut conn = UnixStream::connect(API).with_context(|| API)?;
    http_get(&mut conn, "/api/v1/alerts")
}

/// socat in the namespace, taking each connection to /dev/null; killed on drop.
struct Sink(Child);

impl Sink {
    fn start() -> anyhow::Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", NS, "socat", "-u"])
            .arg(format!("TCP-LISTEN:{SINK_PORT},reuseaddr,fork"))
            .arg("OPEN:/dev/null")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("socat (Debian package; `cargo xtask setup` installs it)")?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self(child))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

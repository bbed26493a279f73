//! `/healthz` follows the agent while it runs, not only at start: a poll thread that stops
//! handing reads to the aggregator makes it 503 and says so, and it is 200 again once the
//! polls come back.
//!
//! The agent's `poll` thread alone is stopped with ptrace (`PTRACE_SEIZE` +
//! `PTRACE_INTERRUPT` on its thread id): its HTTP threads and its aggregator run on.

use std::time::{Duration, Instant};

use exfil_tests::{Agent, POLL, require_root};

/// The floor of the staleness limit (`sensor::health::STALE_MIN`: the test agent polls far
/// more often than every 3 s).
const STALE_MIN: Duration = sensor::health::STALE_MIN;

/// The thread id of the agent's thread named `name`.
fn thread_named(pid: u32, name: &str) -> anyhow::Result<i32> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let comm = std::fs::read_to_string(task.path().join("comm"))?;
        if comm.trim_end() == name {
            return Ok(task.file_name().to_string_lossy().parse()?);
        }
    }
    anyhow::bail!("agent {pid} has no thread named {name}")
}

/// Stops one thread (and only it) until dropped.
struct Stopped(i32);

impl Stopped {
    fn thread(tid: i32) -> anyhow::Result<Self> {
        // SAFETY: ptrace on a thread id with no pointers passed; the result is checked.
        let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) };
        anyhow::ensure!(
            seized == 0,
            "PTRACE_SEIZE {tid}: {}",
            std::io::Error::last_os_error()
        );
        let stopped = Self(tid);
        // SAFETY: as above.
        let interrupted = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) };
        anyhow::ensure!(
            interrupted == 0,
            "PTRACE_INTERRUPT {tid}: {}",
            std::io::Error::last_os_error()
        );
        let mut status = 0;
        // SAFETY: waits for the traced thread's stop; `status` is a valid out pointer.
        let waited = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        anyhow::ensure!(
            waited == tid,
            "waitpid {tid}: {}",
            std::io::Error::last_os_error()
        );
        Ok(stopped)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: detaching resumes the thread; nothing is passed by pointer.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, 0, 0) };
    }
}

/// `/healthz` until `done` holds for it, at most `within`.
fn health_until(
    agent: &Agent,
    within: Duration,
    done: impl Fn(u16, &str) -> bool,
) -> anyhow::Result<(u16, String, Duration)> {
    let start = Instant::now();
    loop {
        let (status, body) = agent.get("/healthz")?;
        if done(status, &body) || start.elapsed() > within {
            return Ok((status, body, start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_stuck_poll_thread_makes_healthz_503_until_the_polls_come_back() -> anyhow::Result<()> {
    require_root();
    let agent = Agent::start()?;
    let (status, body) = agent.get("/healthz")?;
    assert_eq!((status, body.lines().next()), (200, Some("ok")), "{body}");

    let stopped = Stopped::thread(thread_named(agent.pid(), "poll")?)?;
    let (status, body, after) =
        health_until(&agent, STALE_MIN + Duration::from_secs(15), |s, _| s != 200)?;
    assert_eq!(status, 503, "after {after:?}: {body}");
    let stale = format!(
        "(at most {} s allowed): the agent is not counting\n",
        STALE_MIN.as_secs()
    );
    assert!(
        body.starts_with("no poll for ") && body.ends_with(&stale),
        "{body}"
    );
    // Not before the limit (the last poll came at most one poll before the stop).
    assert!(after + POLL >= STALE_MIN, "503 after {after:?}");

    drop(stopped);
    let (status, body, _) = health_until(&agent, Duration::from_secs(15), |s, _| s == 200)?;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    Ok(())
}

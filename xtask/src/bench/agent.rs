//! The release agent as the benches run it: started on the bench's listen address and pin
//! directory with a fresh journal and detection state, checked healthy over HTTP, stopped.

use std::{
    io::{Read, Write},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{LISTEN, PIN_DIR};
use crate::workspace_root;

/// SIGINT, then SIGKILL if the child is still there 5 s later (bpftrace has been seen to miss
/// a SIGINT on this VM, and a bench must not hang on it).
pub(crate) fn stop(child: &mut Child) {
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts the release agent on the bench's listen address and pin directory, a fresh journal
/// `target/bench/journal-{name}` (writing it is part of the agent's cost), a fresh detection
/// state `target/bench/{name}-state.json` (never the host's), and `keys` (dotted TOML keys,
/// one per line), written to `target/bench/{name}.toml`; its log goes to
/// `target/bench/{name}.log`. Returns once it is healthy, or stops it.
pub(crate) fn start_sensor(name: &str, keys: &str) -> anyhow::Result<Child> {
    let bench = workspace_root().join("target/bench");
    let journal = bench.join(format!("journal-{name}"));
    let _ = std::fs::remove_dir_all(&journal);
    let state = bench.join(format!("{name}-state.json"));
    let _ = std::fs::remove_file(&state);
    let config = bench.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "http.listen = \"{LISTEN}\"\nkernel.pin_dir = \"{PIN_DIR}\"\n\
             journal.dir = \"{}\"\ndetect.state_file = \"{}\"\n{keys}",
            journal.display(),
            state.display()
        ),
    )?;
    let log = std::fs::File::create(bench.join(format!("{name}.log")))?;
    let mut child = Command::new(workspace_root().join("target/release/exfil-sensor"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stderr(log)
        .spawn()
        .context("starting the sensor")?;
    if let Err(e) = wait_healthy(LISTEN) {
        stop(&mut child);
        return Err(e);
    }
    Ok(child)
}

/// Waits up to 20 s for the sensor listening on `listen` to answer `/healthz` with 200.
fn wait_healthy(listen: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let healthy = std::net::TcpStream::connect(listen)
            .map_err(anyhow::Error::from)
            .and_then(|mut conn| http_get(&mut conn, "/healthz"));
        if healthy.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the sensor was not healthy within 20 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTP/1.0 GET of `path`, returning the body of a 200 answer (the server closes the
/// connection after it).
pub(crate) fn http_get(conn: &mut (impl Read + Write), path: &str) -> anyhow::Result<String> {
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .context("an HTTP answer without a body")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

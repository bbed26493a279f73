//! Bad input gets one clear line on stderr and a non-zero exit, never a panic.

use std::{path::Path, process::Command};

use exfil_tests::{agent_bin, require_root};

/// Runs the agent binary with `args`; returns (exit code, stderr).
fn agent(args: &[&str]) -> (i32, String) {
    agent_as(Command::new(agent_bin()), args)
}

fn agent_as(mut cmd: Command, args: &[&str]) -> (i32, String) {
    let out = cmd.args(args).output().expect("the agent binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn temp(name: &str, content: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("exfil-bad-{}-{name}", std::process::id()));
    std::fs::write(&path, content).expect("write temp file");
    path
}

#[test]
fn not_root_is_named() {
    require_root(); // to drop to nobody, we must be root first
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(agent_bin());
    let (code, stderr) = agent_as(cmd, &["run", "--api-socket", "/tmp/exfil-bad-nobody.sock"]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "exfil-sensor: exfil-sensor needs root, or the capabilities CAP_BPF, CAP_PERFMON and \
         CAP_NET_ADMIN (running as uid 65534 with effective capabilities 0x0)\n"
    );
}

#[test]
fn port_in_use_is_named() {
    require_root();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, stderr) = agent(&[
        "run",
        "--listen",
        &addr,
        "--api-socket",
        "/tmp/exfil-bad-port.sock",
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!("exfil-sensor: cannot listen on {addr}: Address already in use (os error 98)\n")
    );
}

#[test]
fn missing_btf_is_named() {
    require_root();
    let config = temp("btf.toml", "[kernel]\nbtf = \"/nonexistent/vmlinux\"\n");
    let (code, stderr) = agent(&[
        "run",
        "--config",
        config.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
        "--api-socket",
        "/tmp/exfil-bad-btf.sock",
    ]);
    std::fs::remove_file(&config).expect("cleanup");
    assert_eq!(code, 1);
    assert!(
        stderr.ends_with(
            "cannot read BTF from /nonexistent/vmlinux (a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y has it; else set kernel.btf): No such file or directory (os error 2)\n"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        !Path::new("/tmp/exfil-bad-btf.sock").exists(),
        "the socket is removed on the way out"
    );
}

#[test]
fn unknown_flag_is_named() {
    let (code, stderr) = agent(&["run", "--bogus"]);
    assert_eq!(code, 2);
    assert_eq!(
        stderr.lines().next(),
        Some("error: unexpected argument '--bogus' found")
    );
}

#[test]
fn bad_config_key_is_named_with_line_and_column() {
    let config = temp("key.toml", "[agent]\npoll_interval = \"1s\"\npoll = 3\n");
    let (code, stderr) = agent(&["check-config", config.to_str().expect("utf-8")]);
    std::fs::remove_file(&config).expect("cleanup");
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!(
            "exfil-sensor: config {}: line 3, column 1: unknown field `poll`, expected `poll_interval` or `interval`\n",
            config.display()
        )
    );
}

#[test]
fn default_config_checks_clean() {
    let out = Command::new(agent_bin())
        .args(["config", "default"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));
    let config = temp("default.toml", &String::from_utf8_lossy(&out.stdout));
    let (code, stderr) = agent(&["check-config", config.to_str().expect("utf-8")]);
    std::fs::remove_file(&config).expect("cleanup");
    assert_eq!((code, stderr.as_str()), (0, ""));
}

#[test]
fn a_reader_that_stops_early_ends_the_listing_quietly() {
    // `exfil-sensor … | head`: the pipe's reader is gone before the output is written.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut cmd = Command::new(agent_bin());
    cmd.stdout(writer);
    assert_eq!(agent_as(cmd, &["config", "default"]), (0, String::new()));
}

#[test]
fn a_full_disk_under_stdout_is_named() {
    let mut cmd = Command::new(agent_bin());
    cmd.stdout(std::fs::File::create("/dev/full").expect("/dev/full"));
    assert_eq!(
        agent_as(cmd, &["config", "default"]),
        (
            1,
            "exfil-sensor: writing to stdout: No space left on device (os error 28)\n".into()
        )
    );
}

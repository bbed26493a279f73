//! `cargo xtask setup`: one line per step; a failing step says what failed and how to fix
//! it by hand.

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// bpf-linker releases after this need a system LLVM this machine does not have.
const BPF_LINKER_VERSION: &str = "0.10.3";
/// cargo-deb for `cargo xtask package` and the package test: 3.8.0 is the newest and builds
/// with rustc 1.95 (its MSRV is 1.85). Packaging the test run's debug build (`--profile
/// dev`) is a warning in it that its authors mean to make an error: check on upgrading.
const CARGO_DEB_VERSION: &str = "3.8.0";
/// Debian packages the tests and tools use: `ip` for test namespaces, bpftool to inspect
/// programs (ns per run), socat for hand checks; iperf3 and bpftrace (the peer the
/// benchmarks compare against) and util-linux's fincore for `cargo xtask bench`; prometheus
/// for promtool, which lints `/metrics` in the tests; prometheus-alertmanager, the real
/// Alertmanager the alert test delivers to.
/// The real servers of the scenario tests (postfix, dovecot-imapd, postgresql; swaks, rsync
/// and python3's imaplib as their clients): each test starts its own instance in the
/// foreground, with its own config and state; the packages' system services are never
/// started (see `debian_packages`). dnsmasq-base: the outside world's DNS server of the
/// destination-name test (no service of its own: the test runs it in the foreground).
/// systemd for `systemd-analyze verify` of the shipped unit (tests/deploy.rs): its
/// maintainer scripts only start or restart anything when systemd is PID 1 (they test
/// /run/systemd/system first), and `systemctl enable` without it only makes symlinks;
/// --no-install-recommends keeps out dbus and systemd-timesyncd.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "prometheus",
    "prometheus-alertmanager",
    "bpftool",
    "socat",
    "iperf3",
    "bpftrace",
    "util-linux",
    "postfix",
    "dovecot-imapd",
    "postgresql",
    "swaks",
    "rsync",
    "python3",
    "dnsmasq-base",
    "systemd",
];

/// What `cargo xtask package` needs besides cargo-deb: dpkg-shlibdeps, from which cargo-deb
/// writes the .deb's library dependencies (without it they are left out, with a warning).
const PACKAGING_PACKAGES: &[&str] = &["dpkg-dev"];

/// Everything: the build tools, and what running the sensor and its tests needs (root).
pub fn run() -> anyhow::Result<()> {
    toolchain()?;
    step("Debian packages", || debian_packages(DEBIAN_PACKAGES))?;
    step("tracefs at /sys/kernel/tracing", || {
        mount("tracefs", "tracefs", "/sys/kernel/tracing")
    })?;
    step("bpffs at /sys/fs/bpf", || {
        mount("bpf", "bpf", "/sys/fs/bpf")
    })?;
    Ok(())
}

/// What building needs, no root required.
pub fn toolchain() -> anyhow::Result<()> {
    step("stable rustfmt and clippy", stable_components)?;
    step(
        "nightly toolchain with rust-src (BPF target)",
        nightly_rust_src,
    )?;
    step(&format!("bpf-linker {BPF_LINKER_VERSION}"), bpf_linker)?;
    Ok(())
}

/// Runs one step and prints its one line: `setup: WHAT: RESULT`.
fn step(what: &str, action: impl FnOnce() -> anyhow::Result<String>) -> anyhow::Result<()> {
    match action() {
        Ok(result) => {
            println!("setup: {what}: {result}");
            Ok(())
        }
        Err(e) => {
            println!("setup: {what}: FAILED");
            Err(e.context(format!("setup step `{what}` failed")))
        }
    }
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_visible(program: &str, args: &[&str], fix: &str) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {program}; fix by hand: {fix}"))?;
    if !status.success() {
        bail!(
            "{program} {} failed ({status}); fix by hand: {fix}",
            args.join(" ")
        );
    }
    Ok(())
}

fn stable_components() -> anyhow::Result<String> {
    let installed = output("rustup", &["component", "list", "--installed"])?;
    let missing: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        return Ok("present".into());
    }
    let mut args = vec!["component", "add"];
    args.extend(&missing);
    run_visible("rustup", &args, "rustup component add rustfmt clippy")?;
    Ok(format!("installed {}", missing.join(", ")))
}

fn nightly_rust_src() -> anyhow::Result<String> {
    let toolchains = output("rustup", &["toolchain", "list"])?;
    let mut did = Vec::new();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run_visible(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
            "rustup toolchain install nightly --profile minimal",
        )?;
        did.push("installed nightly");
    }
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run_visible(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
            "rustup component add rust-src --toolchain nightly",
        )?;
        did.push("installed rust-src");
    }
    Ok(if did.is_empty() {
        "present".into()
    } else {
        did.join(", ")
    })
}

fn bpf_linker() -> anyhow::Result<String> {
    if let Ok(version) = output("bpf-linker", &["--version"])
        && version.contains(BPF_LINKER_VERSION)
    {
        return Ok("present".into());
    }
    let spec = format!("bpf-linker@{BPF_LINKER_VERSION}");
    let fix = format!("cargo install {spec} --locked");
    run_visible("cargo", &["install", &spec, "--locked"], &fix)?;
    // cargo installs into ~/.cargo/bin: make sure that is where the build will look.
    output("bpf-linker", &["--version"])
        .context("bpf-linker was installed but is not on PATH; add ~/.cargo/bin to PATH")?;
    Ok("installed".into())
}

/// cargo-deb at [`CARGO_DEB_VERSION`] (not part of setup: only packaging needs it).
pub fn cargo_deb() -> anyhow::Result<()> {
    step(&format!("cargo-deb {CARGO_DEB_VERSION}"), || {
        if let Ok(version) = output("cargo", &["deb", "--version"])
            && version.trim() == format!("cargo-deb {CARGO_DEB_VERSION}")
        {
            return Ok("present".into());
        }
        let spec = format!("cargo-deb@{CARGO_DEB_VERSION}");
        let fix = format!("cargo install {spec} --locked");
        run_visible("cargo", &["install", &spec, "--locked"], &fix)?;
        Ok("installed".into())
    })
}

/// The Debian packages packaging needs (root only when one is missing).
pub fn packaging_packages() -> anyhow::Result<()> {
    step("Debian packages for packaging", || {
        debian_packages(PACKAGING_PACKAGES)
    })
}

/// cargo-fuzz for `cargo xtask fuzz` (not part of setup: only fuzzing needs it).
pub fn cargo_fuzz() -> anyhow::Result<()> {
    if output("cargo", &["fuzz", "--version"]).is_ok() {
        return Ok(());
    }
    run_visible(
        "cargo",
        &["install", "cargo-fuzz", "--locked"],
        "cargo install cargo-fuzz --locked",
    )
}

fn debian_packages(packages: &[&str]) -> anyhow::Result<String> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|pkg| {
            output("dpkg-query", &["-W", "-f=${Status}", pkg])
                .map_or(true, |s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok("present".into());
    }
    let fix = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    run_visible("apt-get", &["update", "-qq"], &fix)?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    // Servers installed for the tests must not start as system services (a PostgreSQL
    // cluster on 5432, a Postfix on 25): invoke-rc.d asks /usr/sbin/policy-rc.d, and 101
    // means "not now". Only our own file is removed afterwards.
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists()
        && std::fs::write(
            policy,
            "#!/bin/sh\n# exfil-sensor setup: no service starts\nexit 101\n",
        )
        .and_then(|()| {
            std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        })
        .is_ok();
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    let status = status.with_context(|| format!("cannot run apt-get; fix by hand: {fix}"))?;
    if !status.success() {
        bail!("apt-get install failed ({status}); fix by hand: {fix}");
    }
    Ok(format!("installed {}", missing.join(", ")))
}

fn mount(fstype: &str, source: &str, target: &str) -> anyhow::Result<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if let Some(at) = mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_, path, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == fstype).then(|| path.to_owned())
    }) {
        return Ok(format!("mounted at {at}"));
    }
    let fix = format!("mount -t {fstype} {source} {target}");
    run_visible("mount", &["-t", fstype, source, target], &fix)?;
    Ok("mounted".into())
}

//! `cargo xtask setup|run|test|package`: everything a fresh machine needs, from one command.

mod bench;
mod package;
mod setup;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "exfil-sensor tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing (nightly rust-src, bpf-linker, Debian packages) and mount
    /// tracefs and bpffs. Idempotent; fast when everything is there.
    Setup,
    /// Setup, release build, then run the sensor in the foreground on the embedded default
    /// config until Ctrl-C. Arguments after `--` go to `exfil-sensor run`.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Measure what the sensor costs against sensor-off and a bpftrace peer, interleaved;
    /// writes BENCHMARKS.md and target/bench/results.json (root only).
    Bench {
        /// 2 rounds, short runs: a few minutes.
        #[arg(long)]
        quick: bool,
        /// Only the load run (10 minutes at the highest send rate to 100k destinations, the
        /// agent on its default map sizes): rewrites only its section of BENCHMARKS.md.
        #[arg(long, conflicts_with_all = ["quick", "soak"])]
        load: bool,
        /// Only the soak (1 hour at a moderate load, RSS and fds sampled every 10 s):
        /// rewrites only its section of BENCHMARKS.md. Run it under `nice -n 10` on a
        /// shared machine.
        #[arg(long, conflicts_with = "quick")]
        soak: bool,
        /// Only the DNS-answer costs (the ingress program's ns per run with and without
        /// DNS traffic, veth throughput with `dns.enabled` on and off): a few minutes;
        /// rewrites only its section of BENCHMARKS.md.
        #[arg(long, conflicts_with_all = ["quick", "load", "soak"])]
        dns: bool,
        /// How long the load or soak run lasts, in seconds, instead of its default
        /// (a shorter run for trying it out).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// The bench's UDP load generator (run by `bench` inside its namespace).
    #[command(hide = true)]
    Flood {
        #[arg(long)]
        destinations: u32,
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long)]
        seconds: u64,
        #[arg(long, default_value_t = 2)]
        threads: u32,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Fuzz one target of fuzz/ (`journal_decoder`, `zeek_importer`, `config`, `web_config`)
    /// for a while, installing cargo-fuzz first when it is missing.
    Fuzz {
        target: String,
        /// How long, in seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// Build tools (and cargo-deb), release build, then the Debian package; prints the path
    /// of the .deb (target/debian/exfil-sensor_VERSION-1_ARCH.deb) last.
    Package,
    /// Setup, unit tests, then the end-to-end tests against the real kernel (root only).
    Test {
        /// Only the unit tests (no root needed).
        #[arg(long)]
        unit: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Run { args } => run(&args),
        Task::Test { unit } => test(unit),
        Task::Package => package::run(),
        Task::Flood {
            destinations,
            rate,
            seconds,
            threads,
            size,
        } => bench::flood::run(bench::flood::Flood {
            destinations,
            rate,
            seconds,
            threads,
            size,
        }),
        Task::Fuzz { target, seconds } => setup::run().and_then(|()| fuzz(&target, seconds)),
        Task::Bench {
            quick,
            load,
            soak,
            dns,
            seconds,
        } => require_root("bench")
            .and_then(|()| setup::run())
            .and_then(|()| match (load, soak, dns) {
                (true, _, _) => bench::run_load(seconds.unwrap_or(bench::LOAD_SECONDS)),
                (_, true, _) => bench::run_soak(seconds.unwrap_or(bench::SOAK_SECONDS)),
                (_, _, true) => bench::dns::run(),
                _ => bench::run(quick),
            }),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

/// `cargo +nightly fuzz run TARGET` for `seconds`, from fuzz/ (its own workspace).
fn fuzz(target: &str, seconds: u64) -> anyhow::Result<()> {
    setup::cargo_fuzz()?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root().join("fuzz"))
        .args(["+nightly", "fuzz", "run", target, "--"])
        .arg(format!("-max_total_time={seconds}"))
        // The reader allocates per segment; the default 2 GB limit is the sanitizer's.
        .arg("-rss_limit_mb=4096");
    status(cmd, &format!("cargo +nightly fuzz run {target}"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs a command to completion; an error names it and its exit status.
fn status(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn require_root(task: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        bail!(
            "`cargo xtask {task}` loads BPF programs and must run as root (uid is {uid}); \
             try: sudo -E cargo xtask {task}"
        );
    }
    Ok(())
}

fn run(args: &[String]) -> anyhow::Result<()> {
    require_root("run")?;
    setup::run()?;
    let mut build = cargo();
    build.args(["build", "--release", "--package", "sensor"]);
    status(build, "cargo build --release --package sensor")?;
    let binary = workspace_root().join("target/release/exfil-sensor");
    println!(
        "xtask: starting {} run {}",
        binary.display(),
        args.join(" ")
    );
    // Become the sensor, so Ctrl-C and SIGTERM reach it directly.
    let err = Command::new(&binary).arg("run").args(args).exec();
    Err(err).with_context(|| format!("executing {}", binary.display()))
}

fn test(unit_only: bool) -> anyhow::Result<()> {
    if !unit_only {
        // Before anything slow: the end-to-end tests cannot run without root, and we never
        // skip them quietly.
        require_root("test")?;
        setup::run()?;
    } else {
        setup::toolchain()?;
    }
    let mut unit = cargo();
    unit.args([
        "test",
        "--workspace",
        "--exclude",
        "sensor-ebpf",
        "--exclude",
        "exfil-tests",
    ]);
    status(unit, "unit tests")?;
    if unit_only {
        return Ok(());
    }
    let mut build = cargo();
    build.args(["build", "--package", "sensor"]);
    status(build, "cargo build --package sensor")?;
    // tests/tests/package.rs installs this one with dpkg.
    let deb = package::deb(package::Build::Test)?;
    let mut e2e = cargo();
    // Every test file runs even after one fails: one CI run names every failure.
    e2e.args([
        "test",
        "--package",
        "exfil-tests",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ])
    .env(
        "EXFIL_SENSOR_BIN",
        workspace_root().join("target/debug/exfil-sensor"),
    )
    .env("EXFIL_SENSOR_DEB", deb);
    println!("xtask: end-to-end tests against the running kernel, one at a time");
    status(e2e, "end-to-end tests")
}

//! `cargo xtask package`: the Debian package, made by cargo-deb from `[package.metadata.deb]`
//! in sensor/Cargo.toml (what goes where, the maintainer scripts in deploy/debian/).

use std::{path::PathBuf, process::Stdio};

use anyhow::{Context as _, bail};

use crate::{cargo, setup, status, workspace_root};

/// Which build of the agent the package holds.
#[derive(Clone, Copy)]
pub enum Build {
    /// The release build, in target/debian/: what `cargo xtask package` makes.
    Release,
    /// The debug build `cargo xtask test` has already made, in target/debian/e2e/ (so it
    /// never stands where a release package is expected), quickly compressed. The package
    /// test checks the packaging (files, scripts, conffiles, user), which is the same for
    /// both builds; a release build just for it would add minutes to every test run.
    Test,
}

/// Builds the .deb from an agent binary built beforehand; returns its absolute path.
pub fn deb(build: Build) -> anyhow::Result<PathBuf> {
    setup::cargo_deb()?;
    setup::packaging_packages()?;
    let mut cmd = cargo();
    // --no-build: the caller built the binary, with the flags its other users share.
    cmd.args(["deb", "--package", "sensor", "--no-build"]);
    if let Build::Test = build {
        // `dev` is the profile whose binary lands in target/debug.
        cmd.args([
            "--profile",
            "dev",
            "--fast",
            "--output",
            "target/debian/e2e/",
        ]);
    }
    // cargo-deb prints the path of the .deb on stdout; its progress and warnings go to
    // stderr.
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo deb")?;
    if !out.status.success() {
        bail!("cargo deb --package sensor failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        // Relative to where cargo deb ran, not to where xtask was started.
        .map(|l| workspace_root().join(l))
        .with_context(|| format!("cargo deb printed no .deb path: {stdout:?}"))?;
    if !path.is_file() {
        bail!("cargo deb named {}, which does not exist", path.display());
    }
    Ok(path)
}

/// `cargo xtask package`: the build tools, a release build, the .deb; its path is the last
/// line printed, for scripts (`deb=$(cargo xtask package | tail -n1)`).
pub fn run() -> anyhow::Result<()> {
    setup::toolchain()?;
    let mut build = cargo();
    build.args(["build", "--release", "--package", "sensor"]);
    status(build, "cargo build --release --package sensor")?;
    let path = deb(Build::Release)?;
    println!("{}", path.display());
    Ok(())
}

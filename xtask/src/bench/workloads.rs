//! The workloads the benches time: `dd` reads and writes of a page-cached file, reading it
//! through a mapping, and iperf3 to the namespace host.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use super::{PEER_IP, Plan};

/// A file of `bytes` bytes for the read benches, kept between runs.
pub(super) fn data_file(dir: &Path, bytes: u64) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("data-{}m.bin", bytes >> 20));
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(bytes) {
        let mut file = std::fs::File::create(&path)?;
        let block = vec![0x5a_u8; 1 << 20];
        for _ in 0..(bytes >> 20) {
            file.write_all(&block)?;
        }
        file.sync_all()?;
    }
    Ok(path)
}

/// Reads the file into the page cache and checks with fincore that all of it is resident
/// (this VM reclaims the page cache after about a minute idle, and sometimes while warming:
/// up to three tries).
fn warm(data: &Path) -> anyhow::Result<()> {
    let size = std::fs::metadata(data)?.len();
    let mut resident = 0;
    for _ in 0..3 {
        let mut file = std::fs::File::open(data)?;
        std::io::copy(&mut file, &mut std::io::sink())?;
        let out = Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(data)
            .output()
            .context("fincore")?;
        resident = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if resident >= size {
            return Ok(());
        }
    }
    bail!(
        "{} is not all in the page cache after three reads ({resident} of {size} bytes)",
        data.display()
    )
}

/// MB/s of `dd` reading the warmed file with blocks of `bs`.
pub(super) fn dd(data: &Path, bs: &str) -> anyhow::Result<f64> {
    warm(data)?;
    let bytes = std::fs::metadata(data)?.len();
    let started = Instant::now();
    let ok = Command::new("dd")
        .arg(format!("if={}", data.display()))
        .args(["of=/dev/null", &format!("bs={bs}"), "status=none"])
        .status()?
        .success();
    if !ok {
        bail!("dd failed");
    }
    Ok(bytes as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// MB/s of `dd` writing a new file of the read benches' size in 64 KiB blocks, into the
/// page cache (no sync: the sensor counts writes as they enter the cache); the file is
/// removed after, its dirty pages discarded unwritten.
pub(super) fn dd_write(plan: &Plan, data: &Path) -> anyhow::Result<f64> {
    let out = data.with_file_name("written.bin");
    let _ = std::fs::remove_file(&out);
    let blocks = plan.file_bytes >> 16;
    let started = Instant::now();
    let ok = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", out.display()))
        .args(["bs=64k", &format!("count={blocks}"), "status=none"])
        .status()?
        .success();
    let elapsed = started.elapsed();
    std::fs::remove_file(&out)?;
    if !ok {
        bail!("dd failed");
    }
    Ok((blocks << 16) as f64 / elapsed.as_secs_f64() / 1e6)
}

/// MB/s of mapping the warmed file and reading every byte of it (summed as u64 words, so
/// that the compiler cannot skip the reads).
pub(super) fn mmap_read(data: &Path) -> anyhow::Result<f64> {
    use std::os::fd::AsRawFd as _;
    warm(data)?;
    let file = std::fs::File::open(data)?;
    let size = usize::try_from(file.metadata()?.len())?;
    let started = Instant::now();
    // SAFETY: a private read-only mapping of a file we hold open, unmapped below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        bail!(
            "mmap {}: {}",
            data.display(),
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the mapping is `size` bytes, page-aligned, readable, and lives until munmap.
    let words = unsafe { std::slice::from_raw_parts(base.cast::<u64>(), size / 8) };
    let sum = words.iter().fold(0u64, |acc, w| acc.wrapping_add(*w));
    std::hint::black_box(sum);
    let elapsed = started.elapsed();
    // SAFETY: unmapping what we mapped; `words` is not used past here.
    unsafe { libc::munmap(base, size) };
    Ok(size as f64 / elapsed.as_secs_f64() / 1e6)
}

/// Mbit/s iperf3 sends to the namespace host with writes of `len`.
pub(super) fn iperf(plan: &Plan, len: &str) -> anyhow::Result<f64> {
    let out = Command::new("iperf3")
        .args([
            "-c",
            PEER_IP,
            "-J",
            "-l",
            len,
            "-t",
            &plan.iperf_seconds.to_string(),
        ])
        .output()
        .context("iperf3")?;
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    report["end"]["sum_sent"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e6)
        .with_context(|| format!("no sender rate in iperf3's report: {}", report["error"]))
}

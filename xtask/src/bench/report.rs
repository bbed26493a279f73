//! BENCHMARKS.md and target/bench/results.json from what `bench` measured.

use std::{collections::BTreeMap, fmt::Write as _, process::Command};

use anyhow::bail;

use super::{BENCHES, Config, Plan, latency, load};

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        f64::midpoint(values[n / 2 - 1], values[n / 2])
    }
}

/// Per-round ratios of `config` to `off`, as (median, min, max).
fn ratio(samples: &BTreeMap<Config, Vec<f64>>, config: Config) -> (f64, f64, f64) {
    let (Some(off), Some(on)) = (samples.get(&Config::Off), samples.get(&config)) else {
        return (f64::NAN, f64::NAN, f64::NAN);
    };
    let mut ratios: Vec<f64> = off.iter().zip(on).map(|(o, c)| c / o).collect();
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(&mut ratios), min, max)
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub(super) fn render(
    plan: &Plan,
    samples: &[BTreeMap<Config, Vec<f64>>],
    kernel: &BTreeMap<String, (u64, f64)>,
    floor: f64,
    load: &load::Load,
    latency: &latency::Latency,
) -> anyhow::Result<String> {
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Measured by `cargo xtask bench` on {}, kernel {}, commit {}: {} rounds, the \
         configurations interleaved in rotating order; each ratio is the median of the \
         per-round ratios to `off` (min–max in brackets). iperf3 runs {} s per sample; the \
         read benches use a {} MiB file checked resident with fincore before each run. \
         The peer is the bpftrace one-liner a user would write instead: a per-pid sum on \
         `syscalls:sys_exit_read` for reads, on `syscalls:sys_exit_write` for writes, on \
         `sock:sock_send_length` for sends.\n",
        command_line("date", &["-u", "+%Y-%m-%d"]),
        command_line("uname", &["-r"]),
        command_line("git", &["rev-parse", "--short", "HEAD"]),
        plan.rounds,
        plan.iperf_seconds,
        plan.file_bytes >> 20,
    )?;
    writeln!(
        md,
        "| bench | off (median) | sensor / off | bpftrace / off | target | met |\n|---|---|---|---|---|---|"
    )?;
    for (bench, samples) in BENCHES.iter().zip(samples) {
        let mut off = samples.get(&Config::Off).cloned().unwrap_or_default();
        let unit = if bench.name.starts_with("iperf3") {
            "Mbit/s"
        } else {
            "MB/s"
        };
        let (s, s_min, s_max) = ratio(samples, Config::Sensor);
        let (p, p_min, p_max) = ratio(samples, Config::Peer);
        let met = s >= bench.target && s >= p;
        writeln!(
            md,
            "| {} | {:.0} {unit} | {s:.3} ({s_min:.3}–{s_max:.3}) | {p:.3} ({p_min:.3}–{p_max:.3}) | ≥ {:.2} and ≥ bpftrace | {} |",
            bench.name,
            median(&mut off),
            bench.target,
            if met { "yes" } else { "**no**" }
        )?;
    }
    writeln!(
        md,
        "\n## Kernel programs\n\nns per run from `bpftool prog show` with \
         `kernel.bpf_stats_enabled=1`, over one 4 KiB `dd` of the file, one `dd` writing a \
         new file of its size in 64 KiB blocks and one iperf3 run with 1 KiB writes. Target: ≤ 100 ns. For scale, an empty program (bpftrace's `{{ }}` \
         on `filemap:mm_filemap_get_pages`) costs {floor:.0} ns per run on this machine, \
         measured the same way in the same run.\n\n| program | runs | ns/run | ≤ 100 ns |\n|---|---|---|---|"
    )?;
    for (name, (runs, ns)) in kernel {
        let met = if *ns <= 100.0 { "yes" } else { "**no**" };
        writeln!(md, "| {name} | {runs} | {ns:.0} | {met} |")?;
    }
    for (name, (runs, ns)) in &load.programs {
        let met = if *ns <= 100.0 { "yes" } else { "**no**" };
        writeln!(
            md,
            "| {name}, under the UDP flood below | {runs} | {ns:.0} | {met} |"
        )?;
    }
    render_load(&mut md, plan, load)?;
    render_latency(&mut md, latency)?;
    Ok(md)
}

fn render_load(md: &mut String, plan: &Plan, load: &load::Load) -> anyhow::Result<()> {
    writeln!(
        md,
        "\n## Under load\n\n`cargo xtask flood` sends 64-byte UDP datagrams from two \
         unconnected sockets (`sendmmsg`, one thread each) round-robin to N distinct \
         destinations (198.51.100.1– × 500 ports), for {} s per phase, inside a namespace \
         whose veth drops every frame. Each phase runs its own agent on fresh maps \
         (`kernel.flow_map_entries` and `flows.max_flows` 262144). Counted: the sum of \
         `bytes_sent` over the sender's rows in `/api/v1/flows` once settled; drops: \
         `exfil_sensor_kernel_drops_total`. Agent CPU from /proc/PID/stat over the phase; peak \
         RSS from VmHWM at the end of the flood, and again after the API has answered one \
         request for every flow (that request's own peak).\n",
        plan.iperf_seconds
    )?;
    writeln!(
        md,
        "| load | sends/s | counted / sent | kernel drops | agent CPU, % of one core | agent peak RSS | after a full `/api/v1/flows` |\n|---|---|---|---|---|---|---|"
    )?;
    writeln!(
        md,
        "| as fast as possible, 100k destinations, no sensor | {:.0} | | | | | |",
        load.off_rate
    )?;
    for phase in &load.phases {
        writeln!(
            md,
            "| {} | {:.0} | {:.6} | {} | {:.1} | {:.0} MiB | {:.0} MiB |",
            phase.name,
            phase.rate(),
            phase.exactness(),
            phase.drops,
            phase.agent_cpu_percent,
            phase.agent_peak_rss_mib,
            phase.agent_peak_rss_with_dump_mib
        )?;
    }
    writeln!(
        md,
        "\nThe journal each phase's agent wrote (`exfil_sensor_journal_bytes` at its end, over \
         the agent's time up, as a day): {}.",
        load.phases
            .iter()
            .map(|p| format!("{}: {:.2} GB/day", p.name, p.journal_gb_per_day))
            .collect::<Vec<_>>()
            .join("; ")
    )?;
    let [fastest, ten_k, hundred_k] = load.phases.as_slice() else {
        bail!("three load phases expected");
    };
    let yes_no = |met: bool| if met { "yes" } else { "**no**" };
    let exact = load.phases.iter().all(|p| p.exactness() == 1.0);
    let flat = fastest.agent_cpu_percent <= 1.5 * hundred_k.agent_cpu_percent;
    let (metrics_median, metrics_max) = hundred_k.metrics_ms.unwrap_or((f64::NAN, f64::NAN));
    writeln!(
        md,
        "\n| target | measured | met |\n|---|---|---|\n\
         | exact (1.000000) with 100k destinations at ≥ 1M sends/s | {:.6} at {:.0} sends/s; \
         with no sensor this machine reaches {:.0} sends/s | exact: {}; rate: {} |\n\
         | agent ≤ 2 % of a core at 100k sends/s over 10k flows | {:.1} % | {} |\n\
         | agent flat in event rate (100k flows: fastest vs 100k sends/s, within 1.5×) | \
         {:.1} % vs {:.1} % | {} |\n\
         | agent RSS ≤ 64 MiB with 100k active flows | {:.0} MiB | {} |\n\
         | `/metrics` ≤ 20 ms with 100k flows behind it | median {:.1} ms, slowest {:.1} ms of 20 | {} |",
        fastest.exactness(),
        fastest.rate(),
        load.off_rate,
        yes_no(exact),
        yes_no(fastest.rate() >= 1e6),
        ten_k.agent_cpu_percent,
        yes_no(ten_k.agent_cpu_percent <= 2.0),
        fastest.agent_cpu_percent,
        hundred_k.agent_cpu_percent,
        yes_no(flat),
        hundred_k.agent_peak_rss_mib,
        yes_no(hundred_k.agent_peak_rss_mib <= 64.0),
        metrics_median,
        metrics_max,
        yes_no(metrics_median <= 20.0),
    )?;
    Ok(())
}

fn render_latency(md: &mut String, latency: &latency::Latency) -> anyhow::Result<()> {
    let interval = latency::INTERVAL.as_secs_f64();
    writeln!(
        md,
        "\n## Alert latency\n\nThe release agent on the default config (interval {interval:.0} s, \
         poll 1 s), fresh maps and detection state per trial; a pause of a different fraction \
         of the interval, then exactly the `burst` threshold (50 MiB) sent to the namespace \
         host in one go; the time from the last byte handed to TCP to the alert in \
         `/api/v1/alerts` (polled every 20 ms). Target: ≤ one interval.\n\n\
         | upload starts, s into the agent's first interval | alert after, s |\n|---|---|"
    )?;
    for (phase, seconds) in &latency.trials {
        writeln!(md, "| {:.2} | {seconds:.2} |", phase.as_secs_f64())?;
    }
    let slowest = latency.slowest();
    writeln!(
        md,
        "\n| target | measured | met |\n|---|---|---|\n\
         | alert ≤ one interval ({interval:.0} s) after the threshold is crossed | median {:.2} s, \
         slowest {slowest:.2} s of {} | {} |",
        latency.median(),
        latency.trials.len(),
        if slowest <= interval { "yes" } else { "**no**" }
    )?;
    Ok(())
}

/// The criterion title of the detection micro-benchmark (sensor/benches/hot_paths.rs).
const DETECTION: &str = "detection: one interval of 100k moved flows";
const JOURNAL_READ: &str = "journal: read 20 intervals of 10k flows (checked, decoded)";
const REPLAY: &str = "replay: 20 intervals of 10k flows, read and detected";

pub(super) fn render_micro(md: &mut String, micro: &BTreeMap<String, f64>) -> anyhow::Result<()> {
    writeln!(
        md,
        "\n## Agent hot paths (criterion)\n\n`cargo bench -p sensor`: median time per \
         iteration, single-threaded, no kernel involved. 100 services, 100,000 flows.\n\n\
         | micro-benchmark | median |\n|---|---|"
    )?;
    for (title, ns) in micro {
        writeln!(md, "| {title} | {:.2} ms |", ns / 1e6)?;
    }
    // Replay: flow rows per second from the medians (20 intervals of 10k flows each).
    let rows = 200_000.0;
    let rate = |title: &str| micro.get(title).map(|ns| rows / (ns / 1e9));
    if let (Some(read), Some(replay)) = (rate(JOURNAL_READ), rate(REPLAY)) {
        writeln!(
            md,
            "\n| target | measured | met |\n|---|---|---|\n\
             | replay ≥ 2M interval flow rows/s on one core | reading (checked, decoded) \
             {:.1}M rows/s; read and detected {:.2}M rows/s | {} |",
            read / 1e6,
            replay / 1e6,
            if replay >= 2e6 { "yes" } else { "**no**" }
        )?;
    }
    // Detection runs once per interval on the poll task: it must leave the interval free.
    let budget_ms = latency::INTERVAL.as_secs_f64() * 1e3 / 10.0;
    if let Some(ns) = micro.get(DETECTION) {
        let ms = ns / 1e6;
        writeln!(
            md,
            "\n| target | measured | met |\n|---|---|---|\n\
             | detection of one interval with 100k moved flows ≤ a tenth of the default \
             interval ({budget_ms:.0} ms) | {ms:.0} ms | {} |",
            if ms <= budget_ms { "yes" } else { "**no**" }
        )?;
    }
    Ok(())
}

pub(super) fn results_json(
    samples: &[BTreeMap<Config, Vec<f64>>],
    kernel: &BTreeMap<String, (u64, f64)>,
    floor: f64,
    load: &load::Load,
    latency: &latency::Latency,
    micro: &BTreeMap<String, f64>,
) -> String {
    let benches: Vec<serde_json::Value> = BENCHES
        .iter()
        .zip(samples)
        .map(|(bench, samples)| {
            let by_config: serde_json::Map<String, serde_json::Value> = samples
                .iter()
                .map(|(c, v)| (c.name().to_owned(), serde_json::json!(v)))
                .collect();
            serde_json::json!({ "bench": bench.name, "samples": by_config })
        })
        .collect();
    let programs: serde_json::Map<String, serde_json::Value> = kernel
        .iter()
        .map(|(n, (runs, ns))| {
            (
                n.clone(),
                serde_json::json!({ "runs": runs, "ns_per_run": ns }),
            )
        })
        .collect();
    serde_json::json!({
        "benches": benches,
        "kernel_programs": programs,
        "empty_program_ns_per_run": floor,
        "micro_benches_median_ns": micro,
        "alert_latency_seconds": latency.trials.iter().map(|(phase, s)| {
            serde_json::json!({ "phase_s": phase.as_secs_f64(), "latency_s": s })
        }).collect::<Vec<_>>(),
        "load": {
            "no_sensor_sends_per_second": load.off_rate,
            "phases": load.phases,
            "programs": load.programs.iter().map(|(n, (runs, ns))| {
                (n.clone(), serde_json::json!({ "runs": runs, "ns_per_run": ns }))
            }).collect::<serde_json::Map<_, _>>(),
        },
    })
    .to_string()
}

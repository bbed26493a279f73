//! The `--load` run's section of BENCHMARKS.md.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{
    Start,
    long_load::{
        CHURN_CLASS, CHURN_FILE_BYTES, ChurnRows, DESTINATIONS, FlowCheck, MetricSums, SIZE,
        STATS_FOR, UNIT,
    },
    run_context,
    sections::{LOAD, yes_no},
};

/// What the load run found.
pub(super) struct Measured {
    pub(super) seconds: u64,
    pub(super) off_seconds: u64,
    pub(super) off_rate: f64,
    /// The flood's CPU (both threads, user and system), % of one core.
    pub(super) off_flood_cpu: f64,
    pub(super) flood_cpu: f64,
    pub(super) rate: f64,
    pub(super) datagrams: u64,
    pub(super) bytes_sent: u64,
    pub(super) check: FlowCheck,
    pub(super) metrics: MetricSums,
    pub(super) drops_flows: u64,
    pub(super) drops_overflow: u64,
    pub(super) drops_process_events: u64,
    pub(super) drops_file_overflow: u64,
    pub(super) processes: u64,
    pub(super) cpu_percent: f64,
    pub(super) peak_rss_kib: u64,
    pub(super) first_rss_kib: u64,
    pub(super) last_rss_kib: u64,
    pub(super) max_rows: u64,
    pub(super) hwm_after_dump: f64,
    pub(super) programs: BTreeMap<String, (u64, f64)>,
    pub(super) churn_rows: ChurnRows,
    /// File rows the agent evicted during the run (`exfil_sensor_table_evictions_total`).
    pub(super) file_evictions: u64,
    /// Programs named `sock_send_length` loaded by others (other agents on the machine),
    /// which every send runs too.
    pub(super) other_send_programs: usize,
}

pub(super) fn render(m: &Measured, seconds: u64, start: &Start) -> anyhow::Result<String> {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let c = &m.check;
    let mut s = String::new();
    let command = super::long_run_command("--load", seconds, super::LOAD_SECONDS);
    writeln!(s, "{LOAD}\n")?;
    writeln!(
        s,
        "`{command}`, {}. The release agent on its default config (`kernel.flow_map_entries` \
         65,536, `flows.max_flows` 100,000) plus a file class `{CHURN_CLASS}` for the churn's \
         file, fresh maps. The flood sends {SIZE}-byte UDP \
         datagrams as fast as it can for {} s from two unconnected sockets (`sendmmsg`, 256 \
         per call, each message with its own address; one thread each) round-robin to \
         {DESTINATIONS} destinations (198.51.100.1–200 × 500 ports), inside a namespace whose \
         veth drops every frame; it runs in a cgroup of its own (`system.slice/{UNIT}`), \
         with a `cat` of a 1 MiB page-cached file started there every 100 ms. The flood \
         counts what each thread sent, and so what each destination got. RSS (VmRSS) \
         sampled every 5 s; the programs' run times counted over {} s from the flood's \
         60th second (`kernel.bpf_stats_enabled=1` for that long).\n",
        run_context(start),
        m.seconds,
        STATS_FOR.as_secs(),
    )?;
    writeln!(s, "| | measured |")?;
    writeln!(s, "|---|---|")?;
    writeln!(
        s,
        "| sends/s, the flood alone ({} s); its CPU, % of one core | {:.0}; {:.0} |",
        m.off_seconds, m.off_rate, m.off_flood_cpu
    )?;
    writeln!(
        s,
        "| sends/s, under the agent; the flood's CPU | {:.0}; {:.0} |",
        m.rate, m.flood_cpu
    )?;
    writeln!(
        s,
        "| datagrams sent | {} ({} bytes) |",
        m.datagrams, m.bytes_sent
    )?;
    writeln!(
        s,
        "| `/api/v1/flows`, the flood's rows summed (`other` included) | {} |",
        c.bytes
    )?;
    writeln!(
        s,
        "| `exfil_sensor_egress_bytes_total{{service=\"{UNIT}\"}}` summed | {} |",
        m.metrics.egress
    )?;
    writeln!(
        s,
        "| `exfil_sensor_egress_class_bytes_total{{service=\"{UNIT}\"}}` summed | {} ({}) |",
        m.metrics.class_total(),
        m.metrics
            .class
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        s,
        "| destinations with a row of their own | {} ({} exact, {} short: made after the map \
         filled, the rest in `other`; {} wrong) |",
        c.rows, c.rows_exact, c.rows_short, c.rows_wrong
    )?;
    writeln!(
        s,
        "| the `other` row | {} bytes, {} sends |",
        c.other_bytes, c.other_sends
    )?;
    writeln!(
        s,
        "| `exfil_sensor_kernel_drops_total` during the run | flows {}, flow_overflow {}, \
         process_events {}, file_overflow {} |",
        m.drops_flows, m.drops_overflow, m.drops_process_events, m.drops_file_overflow
    )?;
    writeln!(
        s,
        "| services of the flood's rows | {} |",
        c.services
            .iter()
            .map(|(k, v)| format!("`{k}` {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        s,
        "| churn: `cat`s started and exited; their rows of the file in `/api/v1/files` | \
         {} started; {} rows, {} of {} bytes; services {} |",
        m.processes,
        m.churn_rows.rows,
        m.churn_rows.bytes,
        m.processes * CHURN_FILE_BYTES,
        m.churn_rows
            .services
            .iter()
            .map(|(k, v)| format!("`{k}` {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        s,
        "| `exfil_sensor_file_read_bytes_total`: under `{UNIT}` (the `cat`s' binaries and \
         libraries included); under `unknown` (any process of the machine) | {}; {} |",
        m.metrics.file_read, m.metrics.file_read_unknown
    )?;
    writeln!(
        s,
        "| `exfil_sensor_file_read_bytes_total{{service=\"{UNIT}\",class=\"{CHURN_CLASS}\"}}` \
         (the churn's file has a class of its own) | {} of {} |",
        m.metrics.churn_class,
        m.processes * CHURN_FILE_BYTES
    )?;
    writeln!(s, "| agent CPU, % of one core | {:.1} |", m.cpu_percent)?;
    writeln!(
        s,
        "| agent RSS: first, last, max of the samples | {:.1}, {:.1}, {:.1} MiB |",
        mib(m.first_rss_kib),
        mib(m.last_rss_kib),
        mib(m.peak_rss_kib)
    )?;
    writeln!(s, "| agent flow rows, max | {} |", m.max_rows)?;
    writeln!(
        s,
        "| agent peak RSS (VmHWM) after one full `/api/v1/flows` | {:.1} MiB |\n",
        m.hwm_after_dump
    )?;
    if !m.programs.is_empty() {
        writeln!(s, "| program | runs | ns/run |")?;
        writeln!(s, "|---|---|---|")?;
        for (name, (runs, ns)) in &m.programs {
            writeln!(s, "| {name} | {runs} | {ns:.0} |")?;
        }
        // One `udp_sendmsg4` run per unconnected UDP send of the machine: the sends of the
        // window, near enough (the flood makes nearly all).
        let sends = m.programs.get("udp_sendmsg4").map_or(0, |p| p.0);
        let ns: f64 = m
            .programs
            .values()
            .map(|(runs, ns)| *runs as f64 * ns)
            .sum();
        if sends > 0 {
            writeln!(
                s,
                "\nThis agent's programs took {:.0} ns per send over the window (all of them, \
                 over the `udp_sendmsg4` runs): at 1,000,000 sends/s, {:.2} of this machine's \
                 2 cores. {} more `sock_send_length` programs of other agents (other users' \
                 tests, pinned agents) were loaded, and every send ran them too.",
                ns / sends as f64,
                ns / sends as f64 * 1e6 / 1e9,
                m.other_send_programs
            )?;
        }
        writeln!(s)?;
    }
    let exact = c.bytes == m.bytes_sent
        && m.metrics.egress == m.bytes_sent
        && m.metrics.class_total() == m.bytes_sent;
    writeln!(s, "| target | measured | met |")?;
    writeln!(s, "|---|---|---|")?;
    writeln!(
        s,
        "| ≥ 1,000,000 sends/s to 100k destinations for {} s | {:.0} | {} |",
        m.seconds,
        m.rate,
        yes_no(m.rate >= 1e6)
    )?;
    writeln!(
        s,
        "| flows, egress and class totals = sent, exactly | {} / {} / {} of {} | {} |",
        c.bytes,
        m.metrics.egress,
        m.metrics.class_total(),
        m.bytes_sent,
        yes_no(exact)
    )?;
    writeln!(
        s,
        "| `other` row's sends = drops{{map=\"flows\"}} (≥: other processes overflow too) | \
         {} vs {} | {} |",
        c.other_sends,
        m.drops_flows,
        yes_no(c.other_sends <= m.drops_flows && m.drops_overflow == 0)
    )?;
    writeln!(
        s,
        "| no destination row over what it was sent | {} wrong | {} |",
        c.rows_wrong,
        yes_no(c.rows_wrong == 0)
    )?;
    writeln!(
        s,
        "| each `cat`'s read of the file counted, under its service: the class's series | \
         {} of {} | {} |",
        m.metrics.churn_class,
        m.processes * CHURN_FILE_BYTES,
        yes_no(m.metrics.churn_class == m.processes * CHURN_FILE_BYTES)
    )?;
    let churn_named = m.churn_rows.services.keys().all(|k| k == UNIT);
    // Rows of exited processes can leave the table (evicted when it is full: the agent counts
    // the whole machine's file reads); those left must be exact, and the rest accounted for.
    let missing = m.processes.saturating_sub(m.churn_rows.rows);
    writeln!(
        s,
        "| the `cat`s' rows of the file still in the files table: exact, named | {} rows for {} \
         `cat`s, {} bytes ({} a row), {}; {missing} rows gone, {} file rows evicted | {} |",
        m.churn_rows.rows,
        m.processes,
        m.churn_rows.bytes,
        if m.churn_rows.bytes == m.churn_rows.rows * CHURN_FILE_BYTES {
            "exactly the file"
        } else {
            "**not the file's size**"
        },
        if churn_named {
            "all named"
        } else {
            "**not all named**"
        },
        m.file_evictions,
        yes_no(
            m.churn_rows.rows <= m.processes
                && m.churn_rows.bytes == m.churn_rows.rows * CHURN_FILE_BYTES
                && churn_named
                && missing <= m.file_evictions
        )
    )?;
    Ok(s)
}

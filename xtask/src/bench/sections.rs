//! The sections of BENCHMARKS.md that runs of their own write (`--load`, `--soak`): each
//! replaces only its own section, and the full bench carries them over unchanged.

use std::fmt::Write as _;

use super::soak::Soak;

pub const LOAD: &str = "## Load, 10 minutes";
pub const SOAK: &str = "## Soak, 1 hour";
/// The sections the full bench does not write, in the order they go at the end.
pub const OWN_RUNS: [&str; 3] = [LOAD, SOAK, super::dns::DNS];

/// `doc` with the section under `heading` (up to the next `## ` heading) replaced by
/// `section` (which starts with the heading), or `section` added at the end.
pub fn splice(doc: &str, heading: &str, section: &str) -> String {
    let section = format!("{}\n", section.trim_end());
    let Some(start) = find_heading(doc, heading) else {
        return format!("{}\n\n{section}", doc.trim_end());
    };
    let after = start + heading.len();
    let end = doc[after..]
        .find("\n## ")
        .map_or(doc.len(), |i| after + i + 1);
    let rest = &doc[end..];
    if rest.is_empty() {
        format!("{}{section}", &doc[..start])
    } else {
        format!("{}{section}\n{rest}", &doc[..start])
    }
}

/// The section under `heading` in `doc`, if there is one.
pub fn section<'a>(doc: &'a str, heading: &str) -> Option<&'a str> {
    let start = find_heading(doc, heading)?;
    let after = start + heading.len();
    let end = doc[after..]
        .find("\n## ")
        .map_or(doc.len(), |i| after + i + 1);
    Some(&doc[start..end])
}

fn find_heading(doc: &str, heading: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = doc[from..].find(heading) {
        let at = from + i;
        let line_start = at == 0 || doc.as_bytes()[at - 1] == b'\n';
        let line_end = doc[at + heading.len()..]
            .chars()
            .next()
            .is_none_or(|c| c == '\n');
        if line_start && line_end {
            return Some(at);
        }
        from = at + heading.len();
    }
    None
}

/// `new` (the full bench's report) with the own-run sections of `old` carried over.
pub fn carry_over(old: &str, new: &str) -> String {
    OWN_RUNS.iter().fold(new.to_owned(), |doc, heading| {
        section(old, heading).map_or(doc.clone(), |s| splice(&doc, heading, s))
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The soak's section. `context`: the date, kernel, commit and what else the machine did.
pub fn render_soak(soak: &Soak, command: &str, context: &str) -> anyhow::Result<String> {
    let mut s = String::new();
    writeln!(s, "{SOAK}\n")?;
    writeln!(
        s,
        "`{command}`, {context}. The release agent on its default config for {} s, fresh maps; \
         meanwhile the flood sends 64-byte UDP datagrams at {} sends/s round-robin to {} \
         destinations (one unconnected socket, `sendmmsg`, in the namespace whose veth drops \
         every frame), and every 250 ms a `cat` starts, reads a 4 MiB page-cached file to \
         the end and exits. VmRSS and the entries of /proc/PID/fd sampled every 10 s, with \
         the rows of the agent's tables (`exfil_sensor_table_entries`: the agent counts \
         every process of the machine, so other users' builds and tests add rows); the \
         first {} s are the warm-up (rows of exited processes stay for `flows.idle_ttl`, \
         10 min).\n",
        soak.seconds, soak.rate, soak.destinations, soak.warm_up_seconds
    )?;
    let (Some(first), Some(last)) = (soak.samples.first(), soak.samples.last()) else {
        anyhow::bail!("the soak took no samples");
    };
    let (rss_warm, rss_after) = soak.max_warm_and_after(|s| s.rss_kib);
    let (fds_warm, fds_after) = soak.max_warm_and_after(|s| s.fds);
    let cpu = (last.cpu_seconds - first.cpu_seconds) / (last.seconds - first.seconds).max(1.0);
    writeln!(
        s,
        "| | first | last | max in warm-up | max after warm-up | slope after warm-up |"
    )?;
    writeln!(s, "|---|---|---|---|---|---|")?;
    writeln!(
        s,
        "| agent RSS | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:+.2} MiB/h |",
        mib(first.rss_kib),
        mib(last.rss_kib),
        mib(rss_warm),
        mib(rss_after),
        soak.rss_slope_mib_per_hour()
    )?;
    let (flows_warm, flows_after) = soak.max_warm_and_after(|s| s.flow_rows);
    let (files_warm, files_after) = soak.max_warm_and_after(|s| s.file_rows);
    writeln!(
        s,
        "| agent flow rows | {} | {} | {flows_warm} | {flows_after} | |",
        first.flow_rows, last.flow_rows
    )?;
    writeln!(
        s,
        "| agent file rows | {} | {} | {files_warm} | {files_after} | |",
        first.file_rows, last.file_rows
    )?;
    writeln!(
        s,
        "| agent open fds | {} | {} | {} | {} | {:+.2}/h |\n",
        first.fds,
        last.fds,
        fds_warm,
        fds_after,
        soak.fd_slope_per_hour()
    )?;
    let exact = soak.bytes_counted == soak.bytes_sent;
    writeln!(
        s,
        "{} datagrams ({} bytes) sent, {} counted for the flood's process ({}); kernel drops \
         {}; {} processes started and exited, {} file bytes read; agent CPU {:.2} % of one \
         core over the run; {} samples.\n",
        soak.datagrams,
        soak.bytes_sent,
        soak.bytes_counted,
        if exact { "exact" } else { "**not exact**" },
        soak.drops,
        soak.processes,
        soak.file_bytes_read,
        cpu * 100.0,
        soak.samples.len()
    )?;
    // Flat: nothing after the warm-up above the warm-up's highest, beyond 1 MiB of
    // allocator noise, and no descriptor more.
    let rss_flat = rss_after <= rss_warm + 1024;
    let fds_flat = fds_after <= fds_warm;
    writeln!(s, "| target | measured | met |")?;
    writeln!(s, "|---|---|---|")?;
    writeln!(
        s,
        "| RSS flat after warm-up (max after ≤ max in warm-up + 1 MiB) | {:.1} MiB vs {:.1} MiB | {} |",
        mib(rss_after),
        mib(rss_warm),
        yes_no(rss_flat)
    )?;
    writeln!(
        s,
        "| open fds flat after warm-up | {fds_after} vs {fds_warm} | {} |",
        yes_no(fds_flat)
    )?;
    writeln!(
        s,
        "| counted = sent | {} / {} | {} |",
        soak.bytes_counted,
        soak.bytes_sent,
        yes_no(exact)
    )?;
    Ok(s)
}

pub fn yes_no(met: bool) -> &'static str {
    if met { "yes" } else { "**no**" }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# B\n\nintro\n\n## A\n\na body\n\n## Soak, 1 hour\n\nold\n\n## C\n\nc\n";

    #[test]
    fn splice_replaces_only_its_section() {
        let out = splice(DOC, SOAK, "## Soak, 1 hour\n\nnew\n");
        assert_eq!(
            out,
            "# B\n\nintro\n\n## A\n\na body\n\n## Soak, 1 hour\n\nnew\n\n## C\n\nc\n"
        );
    }

    #[test]
    fn splice_appends_a_missing_section() {
        let out = splice("# B\n\n## A\n\na\n", LOAD, "## Load, 10 minutes\n\nl\n");
        assert_eq!(out, "# B\n\n## A\n\na\n\n## Load, 10 minutes\n\nl\n");
    }

    #[test]
    fn carry_over_keeps_own_sections() {
        let out = carry_over(DOC, "# B\n\nregenerated\n");
        assert_eq!(out, "# B\n\nregenerated\n\n## Soak, 1 hour\n\nold\n");
    }
}

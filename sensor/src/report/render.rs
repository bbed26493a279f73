//! The report as text: a table for the terminal, JSON for scripts, CSV for a spreadsheet.

use std::fmt::Write as _;

use super::Report;
use crate::api::AlertRecord;
use crate::table::{left, printable, render, right};

/// Four sections: the span and total, the top destinations, the timeline, the alerts. With
/// journals of several hosts, the destinations name their hosts, the timeline gains a HOST
/// column and the alerts come per host.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let several = report.hosts.len() > 1;
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "External bytes sent {} to {}{}: {} ({}), per {}.\n",
        report.from.as_deref().unwrap_or("-"),
        report.to.as_deref().unwrap_or("-"),
        if several {
            format!(
                " by {} hosts ({})",
                report.hosts.len(),
                printable(&report.hosts.join(", "))
            )
        } else {
            String::new()
        },
        report.external_bytes,
        bytesize::ByteSize(report.external_bytes).display().iec(),
        match report.bucket {
            super::Bucket::Hour => "hour",
            super::Bucket::Day => "day",
        }
    );
    out.push_str("Top destinations\n");
    // A NAMES column once a DNS answer named one of them (journals of 0.7 on, `[dns]` on).
    let named = report.destinations.iter().any(|d| !d.names.is_empty());
    let rows: Vec<Vec<String>> = report
        .destinations
        .iter()
        .map(|d| {
            let mut row = vec![printable(&d.destination)];
            if named {
                row.push(if d.names.is_empty() {
                    "-".to_owned()
                } else {
                    printable(&d.names.join(","))
                });
            }
            row.push(d.bytes.to_string());
            if several {
                row.push(printable(&d.hosts.join(",")));
            }
            row.extend([
                printable(&d.services.join(",")),
                d.first_seen.clone(),
                d.last_seen.clone(),
            ]);
            row
        })
        .collect();
    let mut columns = vec![left("DESTINATION")];
    if named {
        columns.push(left("NAMES"));
    }
    columns.push(right("BYTES"));
    if several {
        columns.push(left("HOSTS"));
    }
    columns.extend([left("SERVICES"), left("FIRST_SEEN"), left("LAST_SEEN")]);
    out.push_str(&render(&columns, &rows));
    out.push_str("\nTimeline\n");
    let rows: Vec<Vec<String>> = report
        .series
        .iter()
        .flat_map(|s| {
            s.points.iter().map(|p| {
                let mut row = vec![p.start.clone()];
                if several {
                    row.push(printable(&s.host));
                }
                row.extend([
                    printable(&s.service),
                    printable(&s.destination),
                    p.bytes.to_string(),
                ]);
                row
            })
        })
        .collect();
    let mut columns = vec![left("TIME")];
    if several {
        columns.push(left("HOST"));
    }
    columns.extend([left("SERVICE"), left("DESTINATION"), right("BYTES")]);
    out.push_str(&render(&columns, &rows));
    if report.alerts.is_empty() {
        out.push_str("\nAlerts\nnone\n");
    }
    let hosts: Vec<&str> = if several {
        report.hosts.iter().map(String::as_str).collect()
    } else {
        vec![""]
    };
    for host in hosts {
        let alerts: Vec<AlertRecord> = report
            .alerts
            .iter()
            .filter(|a| !several || a.host == host)
            .map(|a| a.alert.clone())
            .collect();
        if alerts.is_empty() {
            continue;
        }
        if several {
            let _ = writeln!(out, "\nAlerts on {}", printable(host));
        } else {
            out.push_str("\nAlerts\n");
        }
        out.push_str(&crate::table::alerts(&alerts));
    }
    restarts(report, several, &mut out);
    out
}

/// Agent starts that took over pinned totals or followed an unclean end, when there were.
fn restarts(report: &Report, several: bool, out: &mut String) {
    if report.restarts.is_empty() {
        return;
    }
    out.push_str("\nRestarts (carried bytes are in the timeline, in the interval after)\n");
    let rows: Vec<Vec<String>> = report
        .restarts
        .iter()
        .map(|r| {
            let mut row = vec![r.at.clone()];
            if several {
                row.push(printable(&r.host));
            }
            row.extend([
                r.previous.clone(),
                r.previous_end.clone().unwrap_or_else(|| "-".to_owned()),
                r.carried_bytes.to_string(),
                r.carried_flows.to_string(),
                r.adopted_bytes.to_string(),
                r.adopted_flows.to_string(),
            ]);
            row
        })
        .collect();
    let mut columns = vec![left("TIME")];
    if several {
        columns.push(left("HOST"));
    }
    columns.extend([
        left("PREVIOUS"),
        left("PREVIOUS_END"),
        right("CARRIED_BYTES"),
        right("CARRIED_FLOWS"),
        right("ADOPTED_BYTES"),
        right("ADOPTED_FLOWS"),
    ]);
    out.push_str(&render(&columns, &rows));
}

pub fn json(report: &Report) -> String {
    // A Report is strings and integers: serializing it cannot fail.
    serde_json::to_string_pretty(report).unwrap_or_default() + "\n"
}

/// The timeline, one row per (bucket, host, service, destination):
/// `time,host,service,destination,bytes`.
pub fn csv(report: &Report) -> Result<String, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(["time", "host", "service", "destination", "bytes"])?;
    for series in &report.series {
        for point in &series.points {
            writer.write_record([
                point.start.as_str(),
                series.host.as_str(),
                series.service.as_str(),
                series.destination.as_str(),
                point.bytes.to_string().as_str(),
            ])?;
        }
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| csv::Error::from(e.into_error()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

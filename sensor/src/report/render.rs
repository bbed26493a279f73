//! The report as text: a table for the terminal, JSON for scripts, CSV for a spreadsheet.

use std::fmt::Write as _;

use super::Report;
use crate::table::{left, printable, render, right};

/// Three sections: the span and total, the top destinations, the timeline, the alerts.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "External bytes sent {} to {}: {} ({}), per {}.\n",
        report.from.as_deref().unwrap_or("-"),
        report.to.as_deref().unwrap_or("-"),
        report.external_bytes,
        bytesize::ByteSize(report.external_bytes).display().iec(),
        match report.bucket {
            super::Bucket::Hour => "hour",
            super::Bucket::Day => "day",
        }
    );
    out.push_str("Top destinations\n");
    let rows: Vec<Vec<String>> = report
        .destinations
        .iter()
        .map(|d| {
            vec![
                printable(&d.destination),
                d.bytes.to_string(),
                printable(&d.services.join(",")),
                d.first_seen.clone(),
                d.last_seen.clone(),
            ]
        })
        .collect();
    out.push_str(&render(
        &[
            left("DESTINATION"),
            right("BYTES"),
            left("SERVICES"),
            left("FIRST_SEEN"),
            left("LAST_SEEN"),
        ],
        &rows,
    ));
    out.push_str("\nTimeline\n");
    let rows: Vec<Vec<String>> = report
        .series
        .iter()
        .flat_map(|s| {
            s.points.iter().map(|p| {
                vec![
                    p.start.clone(),
                    printable(&s.service),
                    printable(&s.destination),
                    p.bytes.to_string(),
                ]
            })
        })
        .collect();
    out.push_str(&render(
        &[
            left("TIME"),
            left("SERVICE"),
            left("DESTINATION"),
            right("BYTES"),
        ],
        &rows,
    ));
    out.push_str("\nAlerts\n");
    if report.alerts.is_empty() {
        out.push_str("none\n");
    } else {
        out.push_str(&crate::table::alerts(&report.alerts));
    }
    out
}

pub fn json(report: &Report) -> String {
    // A Report is strings and integers: serializing it cannot fail.
    serde_json::to_string_pretty(report).unwrap_or_default() + "\n"
}

/// The timeline, one row per (bucket, service, destination): `time,service,destination,bytes`.
pub fn csv(report: &Report) -> Result<String, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(["time", "service", "destination", "bytes"])?;
    for series in &report.series {
        for point in &series.points {
            writer.write_record([
                point.start.as_str(),
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

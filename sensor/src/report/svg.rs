//! The timeline as an SVG chart: one stepped line per top destination (its bytes per bucket,
//! all services together), each alert a red mark at the time it was raised, labelled with its
//! kind and destination. The picture a responder pastes into a breach report.

use std::collections::BTreeMap;

use plotters::prelude::*;

use super::{OTHER, Report};
use crate::detect::{parse_rfc3339_ms, rfc3339};

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 600;
const MIB: f64 = 1_048_576.0;

/// Distinct, print-safe colours (Okabe–Ito), cycled.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

#[derive(Debug, thiserror::Error)]
#[error("cannot draw the chart: {0}")]
pub struct SvgError(String);

fn drawing<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> SvgError {
    SvgError(e.to_string())
}

pub fn svg(report: &Report) -> Result<String, SvgError> {
    let bucket = report.bucket.ms();
    // Per top destination, bytes per bucket summed over its services.
    let mut lines: Vec<(&str, BTreeMap<u64, u64>)> = report
        .destinations
        .iter()
        .map(|d| (d.destination.as_str(), BTreeMap::new()))
        .collect();
    for series in report.series.iter().filter(|s| s.destination != OTHER) {
        if let Some((_, points)) = lines.iter_mut().find(|(d, _)| *d == series.destination) {
            for p in &series.points {
                *points.entry(p.start_ms).or_default() += p.bytes;
            }
        }
    }
    // x is the bucket's index from the first bucket: labels fall on whole hours or days.
    let (start, end) = report.span_ms.unwrap_or((0, bucket));
    let x0 = start - start % bucket;
    let buckets = end.saturating_sub(x0).div_ceil(bucket).max(1);
    let index = |ms: u64| (ms.saturating_sub(x0) / bucket).min(buckets);
    let label = |i: &u64| {
        let text = rfc3339(x0 + i * bucket);
        match report.bucket {
            super::Bucket::Hour => text.replace('T', " ").replace(":00Z", ""),
            super::Bucket::Day => text.split('T').next().unwrap_or_default().to_owned(),
        }
    };
    let peak = lines
        .iter()
        .flat_map(|(_, p)| p.values())
        .copied()
        .max()
        .unwrap_or(0) as f64
        / MIB;
    let y1 = (peak * 1.15).max(1.0);

    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let title = format!(
            "External bytes per {} and destination, {} to {}",
            match report.bucket {
                super::Bucket::Hour => "hour",
                super::Bucket::Day => "day",
            },
            report.from.as_deref().unwrap_or("-"),
            report.to.as_deref().unwrap_or("-")
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0..buckets, 0.0..y1)
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .x_labels(8)
            .x_label_formatter(&label)
            .y_desc("MiB")
            .draw()
            .map_err(drawing)?;
        for (i, (destination, points)) in lines.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            // A step per bucket (its volume holds for the whole bucket); buckets without bytes
            // are zero: a line that drops, not one that jumps over them.
            let values: Vec<(u64, f64)> = (0..buckets)
                .flat_map(|i| {
                    let bytes = points.get(&(x0 + i * bucket)).copied().unwrap_or(0);
                    let mib = bytes as f64 / MIB;
                    [(i, mib), (i + 1, mib)]
                })
                .collect();
            chart
                .draw_series(LineSeries::new(values, colour.stroke_width(2)))
                .map_err(drawing)?
                .label(*destination)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour));
        }
        let several_hosts = report.hosts.len() > 1;
        for super::HostAlert { host, alert } in &report.alerts {
            let Some(at) = parse_rfc3339_ms(&alert.raised_at) else {
                continue;
            };
            let at = index(at);
            chart
                .draw_series([PathElement::new([(at, 0.0), (at, y1)], RED.stroke_width(1))])
                .map_err(drawing)?;
            chart
                .draw_series([Text::new(
                    if several_hosts {
                        format!("{} {} ({host})", alert.kind, alert.destination)
                    } else {
                        format!("{} {}", alert.kind, alert.destination)
                    },
                    (at, y1 * 0.97),
                    ("sans-serif", 12).into_font().color(&RED),
                )])
                .map_err(drawing)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(text)
}

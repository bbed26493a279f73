//! One frame of `exfil-sensor top` from its state: a pure function of the state, the socket
//! and the clock, so a test renders it on a `TestBackend` and reads the text back.

use std::{borrow::Cow, path::Path, time::SystemTime};

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Cell, HighlightSpacing, Paragraph, Row, Table, TableState, Wrap},
};

use super::state::{HISTORY_LEN, ServiceView, TopState};
use crate::table::printable;

/// Width of a rate column: "1023.9 KiB" is the widest value.
const RATE_WIDTH: u16 = 10;
/// One more than the widest total, so that its title stands apart from the rate's before it.
const TOTAL_WIDTH: u16 = 11;
const SERVICE_MIN_WIDTH: u16 = 20;
const CLASS_WIDTH: u16 = 10;
const SELECTED_MARK: &str = "> ";

pub fn draw(frame: &mut Frame, state: &TopState, socket: &Path, now: SystemTime) {
    let [
        title,
        totals,
        status,
        services,
        destinations_title,
        destinations,
    ] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        // An unreachable agent's message is longer than 80 columns; it wraps here.
        Constraint::Length(2),
        Constraint::Fill(1),
        Constraint::Length(1),
        Constraint::Fill(1),
    ])
    .areas(frame.area());

    frame.render_widget(
        Line::from(format!(
            "exfil-sensor top · agent {} · {}",
            socket.display(),
            humantime::format_rfc3339_seconds(now)
        ))
        .style(Style::new().add_modifier(Modifier::BOLD)),
        title,
    );
    let [sent, received, read] = state.total_rates().map(per_second);
    frame.render_widget(
        Line::from(format!(
            "all services  sent {sent}  received {received}  read {read}"
        )),
        totals,
    );
    let status_line = match state.error() {
        Some(error) => Paragraph::new(format!("{} (retrying every second)", printable(error)))
            .style(Style::new().fg(Color::Red))
            .wrap(Wrap { trim: true }),
        None => Paragraph::new("↑/↓ or j/k select a service · q quit")
            .style(Style::new().add_modifier(Modifier::DIM)),
    };
    frame.render_widget(status_line, status);

    draw_services(frame, state, services);

    let selected = state.selected_service();
    frame.render_widget(
        Line::from(match selected {
            Some(s) => format!("destinations of {}", printable(&s.service)),
            None => "destinations".to_owned(),
        })
        .style(Style::new().add_modifier(Modifier::BOLD)),
        destinations_title,
    );
    draw_destinations(frame, selected, destinations);
}

fn draw_services(frame: &mut Frame, state: &TopState, area: Rect) {
    // The sparkline takes what the numbers leave, up to a minute of samples; the service
    // name gets the rest, so wide terminals show long unit names whole.
    let mark = u16::try_from(SELECTED_MARK.chars().count()).unwrap_or(u16::MAX);
    let fixed = mark + 3 * RATE_WIDTH + TOTAL_WIDTH + 5;
    let spare = area.width.saturating_sub(fixed + SERVICE_MIN_WIDTH);
    let trend_width = spare.min(u16::try_from(HISTORY_LEN).unwrap_or(u16::MAX));
    let service_width = area.width.saturating_sub(fixed + trend_width);
    let header = Row::new([
        Cell::from("SERVICE"),
        right("SENT/s"),
        right("RECV/s"),
        right("READ/s"),
        right("TOTAL SENT"),
        Cell::from("SENT/s TREND"),
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = state.services().iter().map(|s| {
        Row::new([
            Cell::from(printable(&s.service)),
            right(rate(s.sent.rate)),
            right(rate(s.received.rate)),
            right(rate(s.read.rate)),
            right(human_bytes(s.sent.total as f64)),
            Cell::from(sparkline(s, usize::from(trend_width))),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(service_width),
            Constraint::Length(RATE_WIDTH),
            Constraint::Length(RATE_WIDTH),
            Constraint::Length(RATE_WIDTH),
            Constraint::Length(TOTAL_WIDTH),
            Constraint::Length(trend_width),
        ],
    )
    .header(header)
    .highlight_symbol(SELECTED_MARK)
    .highlight_spacing(HighlightSpacing::Always)
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut table_state = TableState::new().with_selected(state.selected_index());
    frame.render_stateful_widget(table, area, &mut table_state);
}

fn draw_destinations(frame: &mut Frame, selected: Option<&ServiceView>, area: Rect) {
    let destinations = selected
        .map(|s| s.destinations.as_slice())
        .unwrap_or_default();
    // A NAME column once a DNS answer named one of them; the addresses then take what they
    // need and the names the rest.
    let named = destinations.iter().any(|d| d.name.is_some());
    let mut header = vec![Cell::from("DESTINATION")];
    let mut widths = vec![Constraint::Fill(1)];
    if named {
        header.push(Cell::from("NAME"));
        let address = destinations
            .iter()
            .map(|d| d.destination.chars().count())
            .max()
            .unwrap_or(0)
            .max("DESTINATION".len());
        widths = vec![
            Constraint::Length(u16::try_from(address).unwrap_or(u16::MAX)),
            Constraint::Fill(1),
        ];
    }
    header.extend([Cell::from("CLASS"), right("SENT/s"), right("TOTAL SENT")]);
    widths.extend([
        Constraint::Length(CLASS_WIDTH),
        Constraint::Length(RATE_WIDTH),
        Constraint::Length(TOTAL_WIDTH),
    ]);
    let header = Row::new(header).style(Style::new().add_modifier(Modifier::BOLD));
    let rows = destinations.iter().map(|d| {
        let mut cells = vec![Cell::from(printable(&d.destination))];
        if named {
            cells.push(Cell::from(
                d.name.as_deref().map_or_else(|| "-".to_owned(), printable),
            ));
        }
        cells.extend([
            Cell::from(printable(&d.class)),
            right(rate(d.sent.rate)),
            right(human_bytes(d.sent.total as f64)),
        ]);
        Row::new(cells)
    });
    let table = Table::new(rows, widths)
        .header(header)
        // Same indent as the services above, so the columns line up under their names.
        .highlight_spacing(HighlightSpacing::Always)
        .highlight_symbol(SELECTED_MARK);
    frame.render_widget(table, area);
}

/// Numbers right-aligned under right-aligned titles, so units and digits line up.
fn right<'a>(text: impl Into<Cow<'a, str>>) -> Cell<'a> {
    Cell::from(Line::from(text.into()).right_aligned())
}

/// A rate in a column headed `…/s`: `-` before there are two samples to difference.
fn rate(bytes_per_s: Option<f64>) -> String {
    bytes_per_s.map_or_else(|| "-".to_owned(), human_bytes)
}

/// A rate on its own, with its unit: `1.5 MiB/s`.
fn per_second(bytes_per_s: Option<f64>) -> String {
    bytes_per_s.map_or_else(|| "-".to_owned(), |r| format!("{}/s", human_bytes(r)))
}

/// `512 B`, `1.5 KiB`, `20.0 MiB`: binary units, one decimal past bytes.
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes;
    let mut unit = 0;
    // Step up where the printed value would round to 1024 (`1024 B`, `1024.0 KiB`).
    while unit + 1 < UNITS.len() && value >= if unit == 0 { 1023.5 } else { 1023.95 } {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The last `width` samples of sent/s as bars, newest at the right; a blank where there was
/// no rate. Each row is scaled to its own peak: the numbers beside it give the size, the
/// line gives the shape, so a quiet service's sudden burst shows even next to a busy one.
fn sparkline(service: &ServiceView, width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let skip = service.history.len().saturating_sub(width);
    let shown: Vec<Option<f64>> = service.history.iter().skip(skip).copied().collect();
    let max = shown.iter().flatten().copied().fold(0.0_f64, f64::max);
    let mut line = " ".repeat(width.saturating_sub(shown.len()));
    for sample in shown {
        line.push(match sample {
            None => ' ',
            Some(_) if max <= 0.0 => BARS[0],
            Some(v) => {
                let level = (v / max * 7.0).round();
                // 0..=7 by construction; clamp so a float surprise cannot index out.
                BARS[(level.clamp(0.0, 7.0)) as usize]
            }
        });
    }
    line
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::api::{DestinationRecord, ServiceRecord};

    fn record(
        name: &str,
        sent: u64,
        received: u64,
        read: u64,
        dests: &[(&str, u64)],
    ) -> ServiceRecord {
        ServiceRecord {
            service: name.into(),
            bytes_sent: sent,
            bytes_received: received,
            bytes_read: read,
            flows: 1,
            destinations: dests
                .iter()
                .map(|&(d, bytes_sent)| DestinationRecord {
                    destination: d.into(),
                    destination_name: None,
                    class: "external".into(),
                    bytes_sent,
                    bytes_received: 0,
                })
                .collect(),
        }
    }

    fn screen(state: &TopState) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).expect("test terminal");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_460_380);
        terminal
            .draw(|frame| draw(frame, state, Path::new("/run/exfil-sensor/api.sock"), now))
            .expect("draws");
        let buffer = terminal.backend().buffer();
        (0..buffer.area.height)
            .map(|y| {
                (0..buffer.area.width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect()
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0.0), "0 B");
        assert_eq!(human_bytes(1023.0), "1023 B");
        assert_eq!(human_bytes(1023.6), "1.0 KiB");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(1_572_864.0), "1.5 MiB");
        assert_eq!(human_bytes(1024.0 * 1023.99), "1.0 MiB");
        assert_eq!(human_bytes(7.0 * 1024.0_f64.powi(4)), "7.0 TiB");
    }

    #[test]
    fn one_frame_at_80_by_24() {
        let t0 = Instant::now();
        let mut state = TopState::default();
        let mib = 1024 * 1024;
        // backup.service speeds up (0.5, 1, 1.5 MiB/s) and a second destination appears in
        // the last sample; postfix.service sends a steady 512 B/s; dovecot.service only reads.
        for (i, backup_sent) in [0, mib / 2, 3 * mib / 2, 3 * mib].into_iter().enumerate() {
            let i = i as u64;
            let backup_sent = 10 * mib + backup_sent;
            let backup_destinations: &[(&str, u64)] = if i == 3 {
                &[
                    ("198.51.100.2", backup_sent - mib / 2),
                    ("2001:db8::9", mib / 2),
                ]
            } else {
                &[("198.51.100.2", backup_sent)]
            };
            let postfix_sent = 2 * mib + 512 * i;
            state.observe(
                vec![
                    record(
                        "backup.service",
                        backup_sent,
                        1024 * i,
                        0,
                        backup_destinations,
                    ),
                    record(
                        "postfix.service",
                        postfix_sent,
                        4096 + 2048 * i,
                        0,
                        &[("203.0.113.25", postfix_sent)],
                    ),
                    record("dovecot.service", 0, 0, 100 * mib + 30 * mib * i, &[]),
                ],
                t0 + Duration::from_secs(i),
            );
        }
        let lines = screen(&state);
        let expected = [
            "exfil-sensor top · agent /run/exfil-sensor/api.sock · 2026-11-23T18:59:40Z      ",
            "all services  sent 1.5 MiB/s  received 3.0 KiB/s  read 30.0 MiB/s               ",
            "↑/↓ or j/k select a service · q quit                                            ",
            "                                                                                ",
            "  SERVICE                  SENT/s     RECV/s     READ/s  TOTAL SENT SENT/s TREND",
            "> backup.service          1.5 MiB    1.0 KiB        0 B    13.0 MiB          ▃▆█",
            "  postfix.service           512 B    2.0 KiB        0 B     2.0 MiB          ███",
            "  dovecot.service             0 B        0 B   30.0 MiB         0 B          ▁▁▁",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "destinations of backup.service                                                  ",
            "  DESTINATION                                  CLASS          SENT/s  TOTAL SENT",
            "  198.51.100.2                                 external      1.0 MiB    12.5 MiB",
            "  2001:db8::9                                  external            -   512.0 KiB",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
        ];
        assert_eq!(lines, expected, "\n{}", lines.join("\n"));
    }

    #[test]
    fn named_destinations_get_a_name_column() {
        let mut state = TopState::default();
        let mut backup = record(
            "backup.service",
            3 << 20,
            0,
            0,
            &[("198.51.100.2", 2 << 20), ("2001:db8::9", 1 << 20)],
        );
        backup.destinations[0].destination_name = Some("upload.example.test".into());
        state.observe(vec![backup], Instant::now());
        let lines = screen(&state);
        let at = lines
            .iter()
            .position(|l| l.starts_with("destinations of backup.service"))
            .expect("the destinations");
        assert_eq!(
            lines[at + 1..at + 4]
                .iter()
                .map(|l| l.trim_end())
                .collect::<Vec<_>>(),
            vec![
                "  DESTINATION  NAME                            CLASS          SENT/s  TOTAL SENT",
                "  198.51.100.2 upload.example.test             external            -     2.0 MiB",
                "  2001:db8::9  -                               external            -     1.0 MiB",
            ]
        );
    }

    #[test]
    fn an_unreachable_agent_is_shown_not_fatal() {
        let mut state = TopState::default();
        state.fail(
            "cannot reach the agent at /run/exfil-sensor/api.sock: No such file or directory \
             (is `exfil-sensor run` running?)"
                .into(),
        );
        let lines = screen(&state);
        assert_eq!(
            lines[2].trim_end(),
            "cannot reach the agent at /run/exfil-sensor/api.sock: No such file or directory"
        );
        assert_eq!(
            lines[3].trim_end(),
            "(is `exfil-sensor run` running?) (retrying every second)"
        );
        assert_eq!(
            lines[1].trim_end(),
            "all services  sent -  received -  read -"
        );
        assert_eq!(lines[14].trim_end(), "destinations");
    }
}

//! `exfil-sensor flows|files|alerts` as aligned plain text, for admins at a terminal. Byte
//! counts stay exact integers, right-aligned, so that `grep`, `sort -n` and `awk` work on
//! them; `--json` is the form meant for scripts.

use std::fmt::Write as _;

use crate::api::{AlertRecord, FileRecord, FlowRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

pub(crate) struct Column {
    title: &'static str,
    align: Align,
}

pub(crate) const fn left(title: &'static str) -> Column {
    Column {
        title,
        align: Align::Left,
    }
}

pub(crate) const fn right(title: &'static str) -> Column {
    Column {
        title,
        align: Align::Right,
    }
}

/// NAME last: scripts that count columns (`sort -k9 -n` for bytes sent) keep working.
const FLOW_COLUMNS: [Column; 12] = [
    left("SERVICE"),
    right("PID"),
    left("COMM"),
    left("DESTINATION"),
    left("CLASS"),
    right("PORT"),
    left("PROTO"),
    left("DIR"),
    right("SENT"),
    right("RECEIVED"),
    left("LAST_SEEN"),
    left("NAME"),
];

const FILE_COLUMNS: [Column; 7] = [
    left("SERVICE"),
    right("PID"),
    left("COMM"),
    left("CLASS"),
    right("BYTES_READ"),
    right("BYTES_WRITTEN"),
    left("PATH"),
];

const ALERT_COLUMNS: [Column; 8] = [
    left("RAISED_AT"),
    left("KIND"),
    left("STATUS"),
    left("SEVERITY"),
    left("SERVICE"),
    left("DESTINATION"),
    right("BYTES"),
    left("SUMMARY"),
];

pub fn flows(records: &[FlowRecord]) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|f| {
            vec![
                printable(&f.service),
                f.pid.to_string(),
                printable(&f.comm),
                printable(&f.destination),
                printable(&f.class),
                f.port.to_string(),
                printable(&f.protocol),
                printable(&f.direction),
                f.bytes_sent.to_string(),
                f.bytes_received.to_string(),
                printable(&f.last_seen),
                f.destination_name
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), printable),
            ]
        })
        .collect();
    render(&FLOW_COLUMNS, &rows)
}

pub fn files(records: &[FileRecord]) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|f| {
            vec![
                printable(&f.service),
                f.pid.to_string(),
                printable(&f.comm),
                printable(&f.class),
                f.bytes_read.to_string(),
                f.bytes_written.to_string(),
                f.path.as_deref().map_or_else(|| "-".to_owned(), printable),
            ]
        })
        .collect();
    render(&FILE_COLUMNS, &rows)
}

pub fn alerts(records: &[AlertRecord]) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|a| {
            vec![
                printable(&a.raised_at),
                printable(&a.kind),
                printable(&a.status),
                printable(&a.severity),
                printable(&a.service),
                printable(&a.destination),
                a.bytes.to_string(),
                printable(&a.summary),
            ]
        })
        .collect();
    render(&ALERT_COLUMNS, &rows)
}

/// Text as it may reach an admin's terminal: process names and file paths are chosen by
/// whoever runs the process, so a control character (a newline that forges a row, an escape
/// sequence that rewrites the screen) is shown escaped, never sent as is.
pub fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// One header line and one line per row; columns two spaces apart, each as wide as its
/// widest cell (in characters); no trailing spaces.
pub(crate) fn render(columns: &[Column], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.title.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let titles: Vec<&str> = columns.iter().map(|c| c.title).collect();
    push_line(&mut out, columns, &widths, &titles);
    for row in rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        push_line(&mut out, columns, &widths, &cells);
    }
    out
}

fn push_line(out: &mut String, columns: &[Column], widths: &[usize], cells: &[&str]) {
    let start = out.len();
    for (i, ((column, width), cell)) in columns.iter().zip(widths).zip(cells).enumerate() {
        if i > 0 {
            out.push_str("  ");
        }
        // Writing to a String cannot fail.
        let _ = match column.align {
            Align::Left => write!(out, "{cell:<width$}"),
            Align::Right => write!(out, "{cell:>width$}"),
        };
    }
    let trimmed = out[start..].trim_end().len();
    out.truncate(start + trimmed);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(service: &str, pid: u32, destination: &str, sent: u64) -> FlowRecord {
        FlowRecord {
            pid,
            comm: "curl".into(),
            exe: "/usr/bin/curl".into(),
            uid: Some(0),
            service: service.into(),
            destination: destination.into(),
            destination_name: None,
            class: "external".into(),
            port: 443,
            protocol: "tcp".into(),
            direction: "outbound".into(),
            bytes_sent: sent,
            sends: 1,
            bytes_received: 5120,
            recvs: 1,
            first_seen: "2026-11-23T19:39:39Z".into(),
            last_seen: "2026-11-23T19:39:40Z".into(),
        }
    }

    #[test]
    fn flows_align_and_keep_exact_bytes() {
        let named = FlowRecord {
            destination_name: Some("upload.example.test".into()),
            ..flow("backup.service", 4242, "198.51.100.2", 7_340_032)
        };
        let text = flows(&[named, flow("postfix@-.service", 17, "2001:db8::25", 12)]);
        assert_eq!(
            text,
            "\
SERVICE             PID  COMM  DESTINATION   CLASS     PORT  PROTO  DIR          SENT  RECEIVED  LAST_SEEN             NAME
backup.service     4242  curl  198.51.100.2  external   443  tcp    outbound  7340032      5120  2026-11-23T19:39:40Z  upload.example.test
postfix@-.service    17  curl  2001:db8::25  external   443  tcp    outbound       12      5120  2026-11-23T19:39:40Z  -
"
        );
    }

    #[test]
    fn files_show_a_dash_for_an_unknown_path() {
        let file = |path: Option<&str>, class: &str, bytes_read, bytes_written| FileRecord {
            pid: 311,
            comm: "dovecot".into(),
            exe: "/usr/sbin/dovecot".into(),
            service: "dovecot.service".into(),
            path: path.map(str::to_owned),
            class: class.into(),
            device: "8:1".into(),
            inode: 1234,
            bytes_read,
            reads: 3,
            bytes_written,
            writes: 2,
        };
        let text = files(&[
            file(Some("/var/mail/alice"), "mail_store", 10_000_019, 0),
            file(None, "other", 4096, 10_000_019),
        ]);
        assert_eq!(
            text,
            "\
SERVICE          PID  COMM     CLASS       BYTES_READ  BYTES_WRITTEN  PATH
dovecot.service  311  dovecot  mail_store    10000019              0  /var/mail/alice
dovecot.service  311  dovecot  other             4096       10000019  -
"
        );
    }

    #[test]
    fn alerts_put_the_summary_last() {
        let text = alerts(&[AlertRecord {
            id: 1,
            kind: "burst".into(),
            severity: "critical".into(),
            service: "backup.service".into(),
            pid: 4242,
            comm: "curl".into(),
            destination: "198.51.100.2".into(),
            port: 443,
            bytes: 7_340_032,
            window_s: 10,
            started_at: "2026-11-23T19:39:30Z".into(),
            raised_at: "2026-11-23T19:39:40Z".into(),
            updated_at: "2026-11-23T19:39:50Z".into(),
            resolved_at: None,
            status: "firing".into(),
            class: None,
            summary: "7.0 MiB to 198.51.100.2 in 10 s".into(),
            description: String::new(),
            destination_name: None,
        }]);
        assert_eq!(
            text,
            "\
RAISED_AT             KIND   STATUS  SEVERITY  SERVICE         DESTINATION     BYTES  SUMMARY
2026-11-23T19:39:40Z  burst  firing  critical  backup.service  198.51.100.2  7340032  7.0 MiB to 198.51.100.2 in 10 s
"
        );
    }

    #[test]
    fn an_empty_list_prints_the_header_only() {
        assert_eq!(
            files(&[]),
            "SERVICE  PID  COMM  CLASS  BYTES_READ  BYTES_WRITTEN  PATH\n"
        );
        assert_eq!(
            alerts(&[]),
            "RAISED_AT  KIND  STATUS  SEVERITY  SERVICE  DESTINATION  BYTES  SUMMARY\n"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut f = flow("x.service", 1, "203.0.113.9", 1);
        f.comm = "evil\n\u{1b}[2J".into();
        let text = flows(&[f]);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains(r"evil\n\u{1b}[2J"), "{text}");
    }
}

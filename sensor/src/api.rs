//! The JSON API's records (shared/CONTRACT.md): what the agent serves on its socket and what
//! `exfil-sensor flows|files|alerts|top` read back. Plain data, built on request.

use serde::{Deserialize, Serialize};

/// One flow: a process's traffic with one remote address, port, protocol and direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// The process id (TGID).
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    /// The process's real uid, when it was read while the process ran.
    pub uid: Option<u32>,
    pub service: String,
    /// The remote address as IP text, or `other`: bytes of this service whose destination
    /// the kernel or the agent had no room to keep apart.
    pub destination: String,
    /// The name the host's own DNS answers gave the address when the row was made (the one
    /// this process looked up, else the most recent; `[dns]`); `null` when none did. Absent
    /// from an older agent's answer.
    #[serde(default)]
    pub destination_name: Option<String>,
    /// `loopback`, `internal` or `external` (config `[networks]`); `other` for the other row.
    pub class: String,
    /// The remote port of an outbound flow, the local port of an inbound one.
    pub port: u16,
    /// `tcp`, `udp` or `other`.
    pub protocol: String,
    /// `outbound` (this host connected) or `inbound` (this host accepted).
    pub direction: String,
    /// Exact bytes sent since the agent (or its pinned maps) started.
    pub bytes_sent: u64,
    pub sends: u64,
    pub bytes_received: u64,
    pub recvs: u64,
    /// RFC 3339, UTC, seconds.
    pub first_seen: String,
    pub last_seen: String,
}

/// One (process, file): what the process read from it and wrote to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub service: String,
    /// The file's path once the kernel told it; `null` until then, and on the other row.
    pub path: Option<String>,
    /// `mail_store`, `records`, `secrets`, `other`, or a class the config adds.
    pub class: String,
    /// `major:minor` of the file's device; `other` on the row of reads the kernel or the
    /// agent had no room to keep apart.
    pub device: String,
    pub inode: u64,
    /// Bytes read: each page of a sequential run once, the last page clipped to the size.
    pub bytes_read: u64,
    pub reads: u64,
    /// Bytes written through the page cache (ext4, xfs), exact since the agent (or its pinned
    /// maps) started. Absent from an older agent's answer: read as 0.
    #[serde(default)]
    pub bytes_written: u64,
    /// Write tracepoint hits: page-cache chunks on ext4 (one `write` may be several), write
    /// calls on xfs.
    #[serde(default)]
    pub writes: u64,
}

/// One alert: an episode of one kind for one service and destination, raised once, updated
/// while it grows, resolved after a quiet period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// Unique per agent state (it survives restarts with the detection state).
    pub id: u64,
    /// `burst`, `lineage`, `new_destination`, `baseline`, `slow_leak`, `budget`, `tamper`.
    pub kind: String,
    /// `critical` or `warning`.
    pub severity: String,
    pub service: String,
    /// The process that sent the most of it (0 when it is a service's total).
    pub pid: u32,
    pub comm: String,
    /// The remote address as IP text; `*` when the alert is about all of a service's
    /// external destinations together.
    pub destination: String,
    pub port: u16,
    /// Bytes sent to the destination from the episode's start to its last update.
    pub bytes: u64,
    /// The rule's window, seconds.
    pub window_s: u64,
    /// RFC 3339, UTC, seconds: when the traffic the alert is about began, when the rule
    /// fired, when the episode last grew, when it was resolved.
    pub started_at: String,
    pub raised_at: String,
    pub updated_at: String,
    pub resolved_at: Option<String>,
    /// `firing` or `resolved`.
    pub status: String,
    /// For `lineage`: the file class that was read (`mail_store`, `records`, `secrets`).
    pub class: Option<String>,
    /// One line.
    pub summary: String,
    /// What was seen, in a few sentences: the numbers and the rule's threshold.
    pub description: String,
    /// The destination's DNS name as the flow rows it is about had it (`[dns]`); `null` when
    /// none did, and for `*`. Absent from an older agent's (or state file's) alert. Last: the
    /// journal writes an alert without a name in the 0.6 layout, this field left off its end.
    #[serde(default)]
    pub destination_name: Option<String>,
}

/// What happened to an alert, for the sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertChange {
    Raised,
    /// It grew (more bytes) while firing.
    Updated,
    Resolved,
}

/// One change of one alert, as the sinks receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub change: AlertChange,
    pub alert: AlertRecord,
}

/// One service's exact totals since the agent started, and its largest destinations now.
/// What `exfil-sensor top` differences every second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub service: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub bytes_read: u64,
    /// Flow rows the agent holds for it.
    pub flows: u64,
    /// Its destinations (all ports and processes summed), most bytes sent first, at most
    /// `destinations` of the query (default 20).
    pub destinations: Vec<DestinationRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationRecord {
    pub destination: String,
    /// A DNS name of the address, from its flow rows; `null` when none.
    #[serde(default)]
    pub destination_name: Option<String>,
    pub class: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// The filters every list endpoint takes: `?service=&class=&limit=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Only rows of this service (exact name).
    pub service: Option<String>,
    /// Only rows of this class: destination class for flows, file class for files, alert
    /// kind for alerts.
    pub class: Option<String>,
    /// At most this many rows, largest first.
    pub limit: Option<usize>,
}

impl Filter {
    pub fn keeps(&self, service: &str, class: &str) -> bool {
        self.service.as_deref().is_none_or(|s| s == service)
            && self.class.as_deref().is_none_or(|c| c == class)
    }

    /// The query string that asks for this filter (`""` when it keeps everything).
    pub fn query_string(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.service {
            parts.push(format!("service={}", percent_encode(s)));
        }
        if let Some(c) = &self.class {
            parts.push(format!("class={}", percent_encode(c)));
        }
        if let Some(l) = self.limit {
            parts.push(format!("limit={l}"));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_query_string_round_trips_unit_names() {
        let f = Filter {
            service: Some("postfix@-.service".into()),
            class: Some("external".into()),
            limit: Some(5),
        };
        assert_eq!(
            f.query_string(),
            "?service=postfix%40-.service&class=external&limit=5"
        );
        assert_eq!(Filter::default().query_string(), "");
        assert!(f.keeps("postfix@-.service", "external"));
        assert!(!f.keeps("postfix@-.service", "internal"));
        assert!(!f.keeps("dovecot.service", "external"));
    }

    /// An older agent's answer, or an older state file's alert, has no `destination_name`:
    /// it reads as none.
    #[test]
    fn records_without_a_destination_name_read_as_unnamed() {
        let flow: FlowRecord = serde_json::from_str(
            r#"{"pid":7,"comm":"curl","exe":"/usr/bin/curl","uid":0,"service":"s","destination":"198.51.100.2","class":"external","port":443,"protocol":"tcp","direction":"outbound","bytes_sent":1,"sends":1,"bytes_received":0,"recvs":0,"first_seen":"t","last_seen":"t"}"#,
        )
        .expect("a 0.6 flow");
        assert_eq!(flow.destination_name, None);
        let alert: AlertRecord = serde_json::from_str(
            r#"{"id":1,"kind":"burst","severity":"critical","service":"s","pid":7,"comm":"curl","destination":"198.51.100.2","port":443,"bytes":1,"window_s":300,"started_at":"t","raised_at":"t","updated_at":"t","resolved_at":null,"status":"firing","class":null,"summary":"x","description":"y"}"#,
        )
        .expect("a 0.6 alert");
        assert_eq!(alert.destination_name, None);
        let named = AlertRecord {
            destination_name: Some("upload.example.test".into()),
            ..alert
        };
        let text = serde_json::to_string(&named).expect("json");
        assert!(
            text.ends_with(r#","destination_name":"upload.example.test"}"#),
            "{text}"
        );
        let unnamed = AlertRecord {
            destination_name: None,
            ..named
        };
        let text = serde_json::to_string(&unnamed).expect("json");
        assert!(text.ends_with(r#","destination_name":null}"#), "{text}");
    }
}

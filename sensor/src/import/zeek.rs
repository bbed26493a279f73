//! Zeek `conn.log` as evidence: each connection's bytes, per side, spread over the interval
//! records its lifetime covers, so that `replay` runs our rules over a network sensor's view.
//!
//! Both of Zeek's forms are read: TSV with its `#separator`/`#fields` header (the default
//! `LogAscii` writer) and JSON lines (`LogAscii::use_json`). Field meanings from Zeek's
//! `base/protocols/conn/main.zeek`: `orig_bytes`/`resp_bytes` are payload bytes each side
//! sent, `local_orig`/`local_resp` say which side is in `Site::local_nets`.

use std::{
    collections::BTreeMap,
    io::BufRead,
    net::IpAddr,
    path::{Path, PathBuf},
};

use crate::flow::{
    class::{DestinationClass, Networks},
    interval::{Direction, FlowInterval, Interval, Protocol},
};

/// The last second of year 9999: a later `ts` is damage, not a time.
const MAX_TS: f64 = 253_402_300_799.0;
/// A connection that lasted longer than a year is damage too (and would be spread over
/// millions of intervals).
const MAX_DURATION: f64 = 366.0 * 86_400.0;

/// A parsed connection whose times are within bounds.
fn in_bounds(conn: Conn) -> Result<Conn, String> {
    if conn.ts > MAX_TS {
        return Err(format!("`ts` = {} is after the year 9999", conn.ts));
    }
    if conn.duration > MAX_DURATION {
        return Err(format!("`duration` = {} is over a year", conn.duration));
    }
    Ok(conn)
}

/// One connection as Zeek logged it (the fields we use).
#[derive(Debug, Clone, PartialEq)]
pub struct Conn {
    /// Unix seconds of the first packet.
    pub ts: f64,
    /// Seconds; 0 when unset (a single-packet or unanswered connection).
    pub duration: f64,
    pub orig_h: IpAddr,
    pub orig_p: u16,
    pub resp_h: IpAddr,
    pub resp_p: u16,
    pub protocol: Protocol,
    pub orig_bytes: u64,
    pub resp_bytes: u64,
    pub local_orig: Option<bool>,
    pub local_resp: Option<bool>,
}

/// A line that could not be read, by its 1-based number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ZeekError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {what}")]
    Header {
        path: PathBuf,
        line: u64,
        what: String,
    },
    #[error("{path}: no connections: not a Zeek conn.log (no `#fields` header nor JSON lines)")]
    Empty { path: PathBuf },
}

/// What a log held: its connections in file order, and the lines skipped.
#[derive(Debug, Default)]
pub struct ConnLog {
    pub conns: Vec<Conn>,
    pub skipped: Vec<Skipped>,
}

/// Reads a conn.log in either form. Broken data lines are skipped and listed; a broken header
/// (no `#fields`, a required field missing) is an error naming its line.
pub fn read(path: &Path) -> Result<ConnLog, ZeekError> {
    let file = std::fs::File::open(path).map_err(|source| ZeekError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(std::io::BufReader::new(file), path)
}

/// [`read`] from any reader; `path` names it in errors.
pub fn parse(input: impl BufRead, path: &Path) -> Result<ConnLog, ZeekError> {
    let io = |source| ZeekError::Io {
        path: path.to_owned(),
        source,
    };
    let mut log = ConnLog::default();
    let mut tsv: Option<Tsv> = None;
    let mut separator = '\t';
    let mut unset = "-".to_owned();
    let mut empty = "(empty)".to_owned();
    for (n, line) in input.split(b'\n').enumerate() {
        let number = n as u64 + 1;
        let raw = line.map_err(io)?;
        // Zeek escapes non-UTF-8 bytes itself; anything else is damage, skipped below.
        let Ok(line) = String::from_utf8(raw) else {
            log.skipped.push(Skipped {
                line: number,
                reason: "not UTF-8".into(),
            });
            continue;
        };
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if line.is_empty() {
            continue;
        }
        if let Some(directive) = line.strip_prefix('#') {
            let header = |what: String| ZeekError::Header {
                path: path.to_owned(),
                line: number,
                what,
            };
            if let Some(value) = directive.strip_prefix("separator ") {
                separator = unescape_separator(value)
                    .ok_or_else(|| header(format!("unreadable #separator {value:?}")))?;
                continue;
            }
            let mut parts = directive.split(separator);
            match parts.next() {
                Some("unset_field") => unset = parts.next().unwrap_or("-").to_owned(),
                Some("empty_field") => empty = parts.next().unwrap_or("(empty)").to_owned(),
                Some("fields") => {
                    tsv = Some(Tsv::new(parts.collect()).map_err(header)?);
                }
                _ => {} // #path, #open, #types, #close: nothing we need
            }
            continue;
        }
        let parsed = if line.starts_with('{') {
            json_conn(line).and_then(in_bounds)
        } else if let Some(tsv) = &tsv {
            tsv.conn(line, separator, &unset, &empty)
                .and_then(in_bounds)
        } else {
            Err("a data line before the `#fields` header".into())
        };
        match parsed {
            Ok(conn) => log.conns.push(conn),
            Err(reason) => log.skipped.push(Skipped {
                line: number,
                reason,
            }),
        }
    }
    if log.conns.is_empty() && tsv.is_none() && log.skipped.is_empty() {
        return Err(ZeekError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(log)
}

/// `\x09` → tab, as Zeek writes its separator.
fn unescape_separator(value: &str) -> Option<char> {
    match value.strip_prefix("\\x") {
        Some(hex) => u8::from_str_radix(hex, 16).ok().map(char::from),
        None => value.chars().next(),
    }
}

/// Column positions of the fields we read, from `#fields`.
struct Tsv {
    columns: usize,
    ts: usize,
    orig_h: usize,
    orig_p: usize,
    resp_h: usize,
    resp_p: usize,
    proto: Option<usize>,
    duration: Option<usize>,
    orig_bytes: Option<usize>,
    resp_bytes: Option<usize>,
    local_orig: Option<usize>,
    local_resp: Option<usize>,
}

impl Tsv {
    fn new(fields: Vec<&str>) -> Result<Self, String> {
        let find = |name: &str| fields.iter().position(|f| *f == name);
        let need = |name: &str| find(name).ok_or_else(|| format!("#fields has no `{name}`"));
        Ok(Self {
            columns: fields.len(),
            ts: need("ts")?,
            orig_h: need("id.orig_h")?,
            orig_p: need("id.orig_p")?,
            resp_h: need("id.resp_h")?,
            resp_p: need("id.resp_p")?,
            proto: find("proto"),
            duration: find("duration"),
            orig_bytes: find("orig_bytes"),
            resp_bytes: find("resp_bytes"),
            local_orig: find("local_orig"),
            local_resp: find("local_resp"),
        })
    }

    fn conn(&self, line: &str, separator: char, unset: &str, empty: &str) -> Result<Conn, String> {
        let values: Vec<&str> = line.split(separator).collect();
        if values.len() != self.columns {
            return Err(format!(
                "{} fields where #fields names {}",
                values.len(),
                self.columns
            ));
        }
        let get = |i: Option<usize>| i.map(|i| values[i]).filter(|v| *v != unset && *v != empty);
        let named = |i: usize, name: &'static str| Field {
            name,
            value: get(Some(i)),
        };
        let optional = |i: Option<usize>, name: &'static str| Field {
            name,
            value: get(i),
        };
        Ok(Conn {
            ts: named(self.ts, "ts").required()?.number()?,
            duration: optional(self.duration, "duration").number_or_zero()?,
            orig_h: named(self.orig_h, "id.orig_h").required()?.parse()?,
            orig_p: named(self.orig_p, "id.orig_p").required()?.parse()?,
            resp_h: named(self.resp_h, "id.resp_h").required()?.parse()?,
            resp_p: named(self.resp_p, "id.resp_p").required()?.parse()?,
            protocol: protocol(get(self.proto)),
            orig_bytes: optional(self.orig_bytes, "orig_bytes").count()?,
            resp_bytes: optional(self.resp_bytes, "resp_bytes").count()?,
            local_orig: optional(self.local_orig, "local_orig").flag()?,
            local_resp: optional(self.local_resp, "local_resp").flag()?,
        })
    }
}

/// One field's text, `None` when unset.
struct Field<'a> {
    name: &'static str,
    value: Option<&'a str>,
}

impl<'a> Field<'a> {
    fn required(self) -> Result<Field<'a>, String> {
        match self.value {
            Some(_) => Ok(self),
            None => Err(format!("`{}` is unset", self.name)),
        }
    }

    fn parse<T: std::str::FromStr>(&self) -> Result<T, String> {
        let value = self.value.unwrap_or_default();
        value
            .parse()
            .map_err(|_| format!("`{}` = {value:?} is not valid", self.name))
    }

    fn number(&self) -> Result<f64, String> {
        let n: f64 = self.parse()?;
        if n.is_finite() && n >= 0.0 {
            Ok(n)
        } else {
            Err(format!("`{}` = {n} is out of range", self.name))
        }
    }

    fn number_or_zero(&self) -> Result<f64, String> {
        self.value.map_or(Ok(0.0), |_| self.number())
    }

    fn count(&self) -> Result<u64, String> {
        self.value.map_or(Ok(0), |_| self.parse())
    }

    fn flag(&self) -> Result<Option<bool>, String> {
        match self.value {
            None => Ok(None),
            Some("T") => Ok(Some(true)),
            Some("F") => Ok(Some(false)),
            Some(other) => Err(format!("`{}` = {other:?} is not T or F", self.name)),
        }
    }
}

fn protocol(proto: Option<&str>) -> Protocol {
    match proto {
        Some("tcp") => Protocol::Tcp,
        Some("udp") => Protocol::Udp,
        _ => Protocol::Other,
    }
}

/// A JSON line: the same field names as keys; `ts` as epoch seconds or RFC 3339 (Zeek's
/// `JSON::TS_EPOCH` and `JSON::TS_ISO8601`).
fn json_conn(line: &str) -> Result<Conn, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let text = |name: &'static str| Field {
        name,
        value: value.get(name).and_then(serde_json::Value::as_str),
    };
    let number = |name: &'static str| -> Result<Option<f64>, String> {
        match value.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .map(Some)
                .ok_or_else(|| format!("`{name}` = {v} is not a number ≥ 0")),
        }
    };
    let count = |name: &'static str| -> Result<u64, String> {
        match value.get(name) {
            None | Some(serde_json::Value::Null) => Ok(0),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("`{name}` = {v} is not a count")),
        }
    };
    let port = |name: &'static str| -> Result<u16, String> {
        value
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| format!("`{name}` is missing or not a port"))
    };
    let ts = match value.get("ts") {
        Some(serde_json::Value::String(s)) => humantime::parse_rfc3339_weak(s)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64())
            .ok_or_else(|| format!("`ts` = {s:?} is not a time"))?,
        _ => number("ts")?.ok_or("`ts` is missing")?,
    };
    let flag = |name: &str| value.get(name).and_then(serde_json::Value::as_bool);
    Ok(Conn {
        ts,
        duration: number("duration")?.unwrap_or(0.0),
        orig_h: text("id.orig_h").required()?.parse()?,
        orig_p: port("id.orig_p")?,
        resp_h: text("id.resp_h").required()?.parse()?,
        resp_p: port("id.resp_p")?,
        protocol: protocol(value.get("proto").and_then(serde_json::Value::as_str)),
        orig_bytes: count("orig_bytes")?,
        resp_bytes: count("resp_bytes")?,
        local_orig: flag("local_orig"),
        local_resp: flag("local_resp"),
    })
}

/// Which side of a connection is the host whose evidence this is: Zeek's own `local_orig` /
/// `local_resp` when it set them, else the side inside `networks` when only one is, else the
/// originator.
fn originator_is_local(conn: &Conn, networks: &Networks) -> bool {
    match (conn.local_orig, conn.local_resp) {
        (Some(true), _) => return true,
        (_, Some(true)) => return false,
        _ => {}
    }
    let inside = |ip: IpAddr| networks.classify(Some(ip)) != DestinationClass::External;
    // The originator, unless only the responder is inside.
    inside(conn.orig_h) || !inside(conn.resp_h)
}

/// The connections as interval records of `interval_ms`, aligned to multiples of it: each
/// connection's bytes are spread over the intervals its lifetime covers in proportion to the
/// overlap (the parts add up to the logged count exactly). The local side is the flow's
/// service (named by its address, `zeek:10.0.0.5`), the other side its destination.
pub fn intervals(conns: &[Conn], networks: &Networks, interval_ms: u64) -> Vec<Interval> {
    let interval_ms = interval_ms.max(1);
    // (interval start, service, destination, port, protocol, direction) → (sent, received)
    type Key = (u64, String, IpAddr, u16, Protocol, Direction);
    let mut rows: BTreeMap<Key, (u64, u64)> = BTreeMap::new();
    for conn in conns {
        let (local, remote, port, direction, sent, received) =
            if originator_is_local(conn, networks) {
                (
                    conn.orig_h,
                    conn.resp_h,
                    conn.resp_p,
                    Direction::Outbound,
                    conn.orig_bytes,
                    conn.resp_bytes,
                )
            } else {
                // Accepted connections carry the local port, as the live agent's rows do.
                (
                    conn.resp_h,
                    conn.orig_h,
                    conn.resp_p,
                    Direction::Inbound,
                    conn.resp_bytes,
                    conn.orig_bytes,
                )
            };
        if sent == 0 && received == 0 {
            continue; // a connection that moved nothing: no row, as live
        }
        let service = format!("zeek:{local}");
        let start = seconds_to_ms(conn.ts);
        let end = start.saturating_add(seconds_to_ms(conn.duration));
        for (bucket, sent, received) in spread(start, end, interval_ms, sent, received) {
            let row = rows
                .entry((
                    bucket,
                    service.clone(),
                    remote,
                    port,
                    conn.protocol,
                    direction,
                ))
                .or_default();
            // Saturating: counts near 2^64 are damage, and must not wrap into small ones.
            row.0 = row.0.saturating_add(sent);
            row.1 = row.1.saturating_add(received);
        }
    }
    let mut out: Vec<Interval> = Vec::new();
    for ((bucket, service, remote, port, protocol, direction), (sent, received)) in rows {
        if out.last().is_none_or(|i| i.start_ms != bucket) {
            out.push(Interval {
                start_ms: bucket,
                end_ms: bucket + interval_ms,
                ..Interval::default()
            });
        }
        let Some(interval) = out.last_mut() else {
            continue;
        };
        interval.flows.push(FlowInterval {
            service,
            pid: 0,
            comm: "zeek".into(),
            exe: String::new(),
            uid: None,
            destination: Some(remote),
            destination_name: None,
            class: networks.classify(Some(remote)),
            port,
            protocol,
            direction,
            bytes_sent: sent,
            sends: u64::from(sent > 0),
            bytes_received: received,
            recvs: u64::from(received > 0),
        });
    }
    out
}

fn seconds_to_ms(seconds: f64) -> u64 {
    // Saturating float-to-int conversion; times are finite and ≥ 0 (checked at parse).
    (seconds * 1000.0).round() as u64
}

/// (interval start, sent, received) for each interval `[start, end]` overlaps, the byte
/// counts split in proportion to the overlap by cumulative rounding so they sum exactly.
fn spread(
    start: u64,
    end: u64,
    interval_ms: u64,
    sent: u64,
    received: u64,
) -> Vec<(u64, u64, u64)> {
    let first = start - start % interval_ms;
    if end <= start {
        return vec![(first, sent, received)];
    }
    let span = u128::from(end - start);
    let share = |total: u64, upto: u64| -> u64 {
        u64::try_from(u128::from(total) * u128::from(upto - start) / span).unwrap_or(total)
    };
    let mut out = Vec::new();
    let (mut sent_done, mut received_done) = (0, 0);
    let mut bucket = first;
    while bucket < end {
        let upto = (bucket + interval_ms).min(end);
        let (s, r) = (share(sent, upto), share(received, upto));
        out.push((bucket, s - sent_done, r - received_done));
        (sent_done, received_done) = (s, r);
        bucket += interval_ms;
    }
    out
}

#[cfg(test)]
mod tests;

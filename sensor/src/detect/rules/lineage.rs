//! `lineage`: a process, or its shell or service, read `mail_store`/`records` files and then
//! sent ≥ 10 MiB (or ≥ half of what it read) to an external destination within an hour; for
//! `secrets`, a send at least as large as the file (ATT&CK AN0989, T1114). Reads a profile
//! expects (dovecot reading mail) taint nothing.
//!
//! The taint follows files too: a tainted process that writes a file (`tar` writing an
//! archive) taints the file, and whoever reads that file later is tainted by it.
//!
//! Who shares a taint: the reader itself, its ancestors in the same service and session
//! (so `tar` and `curl` of one shell meet at their shell), and its (service, session).

use crate::detect::{HashMap, HashSet};
use std::{collections::BTreeMap, net::IpAddr};

use super::{Profiles, ms};
use crate::{
    detect::{Hit, Kind, Sender, Traffic, config::LineageConfig, size},
    flow::{
        class::DestinationClass,
        interval::{Direction, Interval},
    },
};

/// A set of processes that share what one of them read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Group {
    Pid(u32),
    Session(String, u32),
}

#[derive(Debug, Clone)]
struct Taint {
    /// Bytes of the class read (through a tainted file: bytes of that file read).
    read: u64,
    /// The largest single file read, for secrets.
    largest: u64,
    last_ms: u64,
    reader: String,
    /// The archive it came through, when it did.
    via: Option<String>,
}

#[derive(Debug, Clone)]
struct FileTaint {
    class: String,
    /// What its writer had read.
    read: u64,
    written_ms: u64,
    writer: String,
    path: Option<String>,
}

/// Tainted bytes sent by a service to one destination.
#[derive(Debug, Clone, Default)]
struct Sent {
    bytes: u64,
    first_ms: u64,
    last_ms: u64,
    sender: Sender,
}

impl Taint {
    fn new(now: u64, reader: String, via: Option<String>) -> Self {
        Self {
            read: 0,
            largest: 0,
            last_ms: now,
            reader,
            via,
        }
    }
}

/// Per group, per file class.
type Taints = HashMap<Group, HashMap<String, Taint>>;

#[derive(Debug, Default)]
pub struct Lineage {
    taints: Taints,
    files: HashMap<(u64, u64), FileTaint>,
    sent: BTreeMap<(String, IpAddr, String), Sent>,
}

/// The live taints of one group: (class, taint).
fn active<'a>(
    taints: &'a Taints,
    group: &Group,
    now: u64,
    window: u64,
) -> impl Iterator<Item = (&'a str, &'a Taint)> {
    taints
        .get(group)
        .into_iter()
        .flatten()
        .filter(move |(_, t)| now.saturating_sub(t.last_ms) <= window)
        .map(|(class, t)| (class.as_str(), t))
}

/// The taint of `class` on `group`, made by `fresh` if it has none.
fn taint_of<'a>(
    taints: &'a mut Taints,
    group: Group,
    class: &str,
    fresh: impl FnOnce() -> Taint,
) -> &'a mut Taint {
    let classes = taints.entry(group).or_default();
    if !classes.contains_key(class) {
        classes.insert(class.to_owned(), fresh());
    }
    classes.get_mut(class).expect("present: inserted above")
}

impl Lineage {
    pub fn observe(
        &mut self,
        config: &LineageConfig,
        profiles: &Profiles,
        interval: &Interval,
        traffic: &Traffic<'_>,
    ) -> Vec<Hit> {
        let now = traffic.end_ms;
        let window = ms(config.window);
        let classes: Vec<&str> = config
            .classes
            .iter()
            .chain(&config.secret_classes)
            .map(String::as_str)
            .collect();
        let watched = |class: &str| classes.contains(&class);
        let groups = |pid: u32, service: &str| -> Vec<Group> {
            let mut groups = vec![Group::Pid(pid)];
            if let Some(p) = traffic.processes.get(&pid) {
                groups.extend(p.ancestors.iter().map(|a| Group::Pid(*a)));
                if let Some(session) = p.session.filter(|s| *s > 0) {
                    groups.push(Group::Session(service.to_owned(), session));
                }
            }
            groups
        };
        // 1. Reads of watched classes taint the reader's groups.
        for file in interval
            .files
            .iter()
            .filter(|f| f.pid != 0 && f.bytes_read > 0)
        {
            if !watched(&file.class) {
                continue;
            }
            let matching = profiles.matching(&file.service, &file.comm);
            if profiles.expects_read(&matching, &file.class) {
                continue;
            }
            for group in groups(file.pid, &file.service) {
                let t = taint_of(&mut self.taints, group, &file.class, || {
                    Taint::new(now, file.comm.clone(), None)
                });
                t.read += file.bytes_read;
                t.largest = t.largest.max(file.bytes_read);
                t.last_ms = now;
            }
        }
        // 1b. What a serving process (a database backend) sent over a loopback connection
        // taints the client that received it (pg_dump): the client reads no file of the
        // class, and the server's own reads say little (its pages come from shared memory).
        // The two ends meet at the server's port: the remote port of the client's row, the
        // local port of the server's.
        let mut served: BTreeMap<(u16, &str), (&str, &str)> = BTreeMap::new();
        for f in interval.flows.iter().filter(|f| {
            f.pid != 0
                && f.direction == Direction::Inbound
                && f.class == DestinationClass::Loopback
                && f.bytes_sent > 0
        }) {
            let matching = profiles.matching(&f.service, &f.comm);
            for class in profiles
                .serves(&matching)
                .into_iter()
                .filter(|c| watched(c))
            {
                served
                    .entry((f.port, class))
                    .or_insert((f.comm.as_str(), f.service.as_str()));
            }
        }
        if !served.is_empty() {
            for f in interval.flows.iter().filter(|f| {
                f.pid != 0
                    && f.direction == Direction::Outbound
                    && f.class == DestinationClass::Loopback
                    && f.bytes_received > 0
            }) {
                let matching = profiles.matching(&f.service, &f.comm);
                for (&(_, class), &(server, service)) in served
                    .range((f.port, "")..)
                    .take_while(|((port, _), _)| *port == f.port)
                {
                    if profiles.expects_read(&matching, class) {
                        continue;
                    }
                    for group in groups(f.pid, &f.service) {
                        let t = taint_of(&mut self.taints, group, class, || {
                            Taint::new(
                                now,
                                format!(
                                    "{} (receiving what {server} of {service} served on local port {})",
                                    f.comm, f.port
                                ),
                                None,
                            )
                        });
                        t.read += f.bytes_received;
                        t.largest = t.largest.max(f.bytes_received);
                        t.last_ms = now;
                    }
                }
            }
        }
        // 2. Writes by tainted processes taint the file; reads of tainted files taint the
        // reader. Twice, so that an archive written and read in one interval is followed.
        let passes = if self.taints.is_empty() && self.files.is_empty() {
            0
        } else {
            2
        };
        for _ in 0..passes {
            for file in interval.files.iter().filter(|f| f.pid != 0 && f.inode != 0) {
                let id = (file.device, file.inode);
                if file.bytes_written > 0 {
                    let strongest = groups(file.pid, &file.service)
                        .iter()
                        .flat_map(|g| active(&self.taints, g, now, window))
                        .max_by_key(|(class, t)| (t.read, std::cmp::Reverse(*class)))
                        .map(|(class, t)| (class.to_owned(), t.read));
                    if let Some((class, read)) = strongest {
                        self.files.insert(
                            id,
                            FileTaint {
                                class,
                                read,
                                written_ms: now,
                                writer: file.comm.clone(),
                                path: file.path.clone(),
                            },
                        );
                    }
                }
                if file.bytes_read > 0
                    && let Some(taint) = self.files.get(&id).cloned()
                {
                    let matching = profiles.matching(&file.service, &file.comm);
                    if profiles.expects_read(&matching, &taint.class) {
                        continue;
                    }
                    for group in groups(file.pid, &file.service) {
                        let t = taint_of(&mut self.taints, group, &taint.class, || {
                            Taint::new(
                                now,
                                format!(
                                    "{} (reading a file {} wrote after reading {} bytes)",
                                    file.comm, taint.writer, taint.read
                                ),
                                Some(taint.path.clone().unwrap_or_default()),
                            )
                        });
                        // Both passes see the same row: keep the largest, never add twice.
                        t.read = t.read.max(file.bytes_read);
                        t.largest = t.largest.max(file.bytes_read);
                        t.last_ms = now;
                    }
                }
            }
        }
        // 3. External sends by tainted processes.
        let mut hits = Vec::new();
        let mut touched = HashSet::default();
        let tainted = if self.taints.is_empty() {
            &[][..]
        } else {
            &traffic.flows[..]
        };
        for f in tainted.iter().filter(|f| f.watched() && f.flow.pid != 0) {
            let flow = f.flow;
            let Some(ip) = flow.destination else { continue };
            // Each class once per flow, with the most read among the sender's groups.
            let mut strongest: BTreeMap<&str, &Taint> = BTreeMap::new();
            for group in groups(flow.pid, &flow.service) {
                for (class, t) in active(&self.taints, &group, now, window) {
                    let e = strongest.entry(class).or_insert(t);
                    if t.read > e.read {
                        *e = t;
                    }
                }
            }
            for (class, taint) in strongest {
                let key = (flow.service.clone(), ip, class.to_owned());
                let sent = self.sent.entry(key.clone()).or_insert_with(|| Sent {
                    first_ms: traffic.start_ms,
                    ..Sent::default()
                });
                sent.bytes += flow.bytes_sent;
                sent.last_ms = now;
                sent.sender.keep_larger(flow);
                let secret = config.secret_classes.iter().any(|c| c == class);
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss
                )]
                let threshold = if secret {
                    taint.largest.max(1)
                } else {
                    let part = (taint.read as f64 * config.fraction) as u64;
                    config
                        .bytes
                        .as_u64()
                        .min(part.max(config.min_bytes.as_u64()))
                };
                if sent.bytes >= threshold && touched.insert(key.clone()) {
                    let service = &flow.service;
                    let via = taint
                        .via
                        .as_ref()
                        .map(|p| {
                            format!(
                                " through the file {}",
                                if p.is_empty() { "(path unknown)" } else { p }
                            )
                        })
                        .unwrap_or_default();
                    hits.push(Hit {
                        kind: Kind::Lineage,
                        service: service.clone(),
                        destination: Some(ip),
                        per_destination: true,
                        sender: sent.sender.clone(),
                        bytes: sent.bytes,
                        growth: 0,
                        window_s: config.window.as_secs(),
                        started_ms: sent.first_ms,
                        class: Some(class.to_owned()),
                        summary: format!(
                            "{service} sent {} to {} after reading {} of {class}",
                            size(sent.bytes),
                            traffic.destination(ip, sent.sender.pid),
                            size(taint.read)
                        ),
                        description: format!(
                            "{} (pid {}) of {service} sent {} bytes to the external address {} after {}{via} read {} bytes of {class} files; the lineage threshold was {} bytes.",
                            sent.sender.comm,
                            sent.sender.pid,
                            sent.bytes,
                            traffic.destination(ip, sent.sender.pid),
                            taint.reader,
                            taint.read,
                            threshold
                        ),
                    });
                }
            }
        }
        // 4. Forget what is out of its window.
        self.taints.retain(|_, classes| {
            classes.retain(|_, t| now.saturating_sub(t.last_ms) <= window);
            !classes.is_empty()
        });
        self.sent
            .retain(|_, s| now.saturating_sub(s.last_ms) <= window);
        let file_window = ms(config.file_window);
        self.files
            .retain(|_, f| now.saturating_sub(f.written_ms) <= file_window);
        while self.files.len() > config.max_files {
            let Some(oldest) = self
                .files
                .iter()
                .min_by_key(|(id, f)| (f.written_ms, **id))
                .map(|(id, _)| *id)
            else {
                break;
            };
            self.files.remove(&oldest);
        }
        hits
    }
}

//! A row as the interval records and the API show it.

use std::{sync::Arc, time::SystemTime};

use sensor_common::FlowKey;

use super::{
    super::{
        class::{DestinationClass, Networks},
        destination,
        interval::{Direction, FlowInterval, Protocol},
    },
    Row,
};
use crate::{api::FlowRecord, dns::NameCache};

/// The name of a kernel key's destination, for a row of its process.
pub(super) fn name_of(
    cache: Option<&NameCache>,
    now: SystemTime,
    key: &FlowKey,
) -> Option<Arc<str>> {
    cache?.lookup(now, destination(key)?, key.tgid)
}

pub(super) fn interval_record(
    key: Option<&FlowKey>,
    row: &Row,
    networks: &Networks,
) -> FlowInterval {
    let p = &row.process;
    let dest = key.and_then(destination);
    FlowInterval {
        service: p.service.clone(),
        pid: key.map_or(0, |k| k.tgid),
        comm: p.comm.clone(),
        exe: p.exe.clone(),
        uid: p.uid,
        destination: dest,
        destination_name: row.name.as_deref().map(str::to_owned),
        class: networks.classify(dest),
        port: key.map_or(0, |k| k.port),
        protocol: key.map_or(Protocol::Other, |k| Protocol::from_kernel(k.protocol)),
        direction: key.map_or(Direction::Other, |k| Direction::from_kernel(k.direction)),
        bytes_sent: row.interval.sent,
        sends: row.interval.sends,
        bytes_received: row.interval.received,
        recvs: row.interval.recvs,
    }
}

pub(super) fn flow_record(key: Option<&FlowKey>, row: &Row, class: DestinationClass) -> FlowRecord {
    let p = &row.process;
    FlowRecord {
        pid: key.map_or(0, |k| k.tgid),
        comm: p.comm.clone(),
        exe: p.exe.clone(),
        uid: p.uid,
        service: p.service.clone(),
        destination: key
            .and_then(destination)
            .map_or_else(|| "other".to_owned(), |ip| ip.to_string()),
        destination_name: row.name.as_deref().map(str::to_owned),
        class: class.as_str().to_owned(),
        port: key.map_or(0, |k| k.port),
        protocol: key
            .map_or(Protocol::Other, |k| Protocol::from_kernel(k.protocol))
            .as_str()
            .to_owned(),
        direction: key
            .map_or(Direction::Other, |k| Direction::from_kernel(k.direction))
            .as_str()
            .to_owned(),
        bytes_sent: row.totals.sent,
        sends: row.totals.sends,
        bytes_received: row.totals.received,
        recvs: row.totals.recvs,
        first_seen: humantime::format_rfc3339_seconds(row.first_seen).to_string(),
        last_seen: humantime::format_rfc3339_seconds(row.last_seen).to_string(),
    }
}

//! The DNS answers the ingress program sends (`DNS_EVENTS`), as the agent takes them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{MapData, RingBuf};
use sensor_common::{DNS_EVENT_HEAD, DnsEvent, FAMILY_IPV4, FAMILY_IPV6, dns::DNS_ADDRS};

use crate::dns::DnsAnswer;

/// Every event in the `DNS_EVENTS` ring, oldest first. Each record is the first
/// `DnsEvent::sent_len` bytes of an event; one of another size is logged and left out.
pub fn drain(ring: &mut RingBuf<MapData>) -> Vec<DnsEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        match event_of(&item) {
            Some(event) => events.push(event),
            None => tracing::warn!(
                bytes = item.len(),
                "a DNS event of a size the program never sends"
            ),
        }
    }
    events
}

/// The event whose first bytes `bytes` are: its head whole, its name's tail zero.
fn event_of(bytes: &[u8]) -> Option<DnsEvent> {
    if bytes.len() < DNS_EVENT_HEAD || bytes.len() > std::mem::size_of::<DnsEvent>() {
        return None;
    }
    let mut event = DnsEvent::EMPTY;
    // SAFETY: DnsEvent is plain old data (aya::Pod); at most its size is written, from a
    // slice of that length.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&raw mut event).cast::<u8>(), bytes.len());
    }
    Some(event)
}

/// The answers the events carry; an event the program cannot have made is logged and left
/// out.
pub fn answers(events: &[DnsEvent]) -> Vec<DnsAnswer> {
    events
        .iter()
        .filter_map(|event| {
            let answer = answer_of(event);
            if answer.is_none() {
                tracing::warn!(
                    name_len = event.name_len,
                    count = event.count,
                    "a DNS event the kernel program cannot have sent"
                );
            }
            answer
        })
        .collect()
}

/// The answer an event carries; `None` for an event the program cannot have sent (no
/// address, a name that is not the printable ASCII the parser lets through), which is logged.
pub fn answer_of(event: &DnsEvent) -> Option<DnsAnswer> {
    let name = event.name.get(..usize::from(event.name_len))?;
    // The parser lets only printable ASCII without '.' into labels, lower-cased.
    let name = std::str::from_utf8(name).ok().filter(|n| {
        n.bytes()
            .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase())
    })?;
    let count = usize::from(event.count);
    if count == 0 || count > DNS_ADDRS {
        return None;
    }
    let addrs = event.addrs[..count]
        .iter()
        .map(|a| {
            let ip = match a.family {
                FAMILY_IPV4 => {
                    IpAddr::V4(Ipv4Addr::new(a.addr[0], a.addr[1], a.addr[2], a.addr[3]))
                }
                FAMILY_IPV6 => IpAddr::V6(Ipv6Addr::from(a.addr)),
                _ => return None,
            };
            Some((ip, a.ttl))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(DnsAnswer {
        pid: (event.tgid != 0).then_some(event.tgid),
        name: name.to_owned(),
        addrs,
    })
}

#[cfg(test)]
mod tests {
    use sensor_common::DnsAddr;

    use super::*;

    fn event(name: &[u8], tgid: u32, addrs: &[DnsAddr]) -> DnsEvent {
        let mut event = DnsEvent::EMPTY;
        event.tgid = tgid;
        event.name[..name.len()].copy_from_slice(name);
        event.name_len = name.len() as u16;
        event.addrs[..addrs.len()].copy_from_slice(addrs);
        event.count = addrs.len() as u8;
        event
    }

    fn addr(family: u8, bytes: &[u8], ttl: u32) -> DnsAddr {
        let mut a = DnsAddr {
            family,
            ttl,
            ..DnsAddr::default()
        };
        a.addr[..bytes.len()].copy_from_slice(bytes);
        a
    }

    #[test]
    fn an_event_becomes_the_answer_it_carries() {
        let v6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let answer = answer_of(&event(
            b"upload.example.test",
            4242,
            &[
                addr(FAMILY_IPV4, &[198, 51, 100, 2], 300),
                addr(FAMILY_IPV6, &v6, 60),
            ],
        ));
        assert_eq!(
            answer,
            Some(DnsAnswer {
                pid: Some(4242),
                name: "upload.example.test".into(),
                addrs: vec![
                    (IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 300),
                    (IpAddr::V6(Ipv6Addr::from(v6)), 60),
                ],
            })
        );
        let unknown = answer_of(&event(b"a.test", 0, &[addr(FAMILY_IPV4, &[1, 2, 3, 4], 1)]));
        assert_eq!(unknown.map(|a| a.pid), Some(None));
    }

    /// What the program sends is the head and the used name; the rest comes back empty.
    #[test]
    fn a_trimmed_event_reads_back_whole() {
        let sent = event(
            b"upload.example.test",
            7,
            &[addr(FAMILY_IPV4, &[1, 2, 3, 4], 9)],
        );
        assert_eq!(sent.sent_len(), DNS_EVENT_HEAD + 24);
        // SAFETY: plain old data, read as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&sent).cast::<u8>(),
                std::mem::size_of::<DnsEvent>(),
            )
        };
        assert_eq!(event_of(&bytes[..sent.sent_len()]), Some(sent));
        assert_eq!(event_of(&bytes[..DNS_EVENT_HEAD - 1]), None);
        let mut long = bytes.to_vec();
        long.push(0);
        assert_eq!(event_of(&long), None);
        let mut longest = sent;
        longest.name_len = 253;
        assert_eq!(longest.sent_len(), std::mem::size_of::<DnsEvent>());
    }

    #[test]
    fn an_event_the_program_cannot_have_sent_is_refused() {
        let good = addr(FAMILY_IPV4, &[1, 2, 3, 4], 1);
        assert_eq!(answer_of(&event(b"a.test", 1, &[])), None);
        assert_eq!(answer_of(&event(b"A.test", 1, &[good])), None);
        assert_eq!(answer_of(&event(b"a te", 1, &[good])), None);
        assert_eq!(answer_of(&event(b"a.test", 1, &[addr(9, &[1], 1)])), None);
        let mut long = event(b"a.test", 1, &[good]);
        long.name_len = 300;
        assert_eq!(answer_of(&long), None);
        let mut many = event(b"a.test", 1, &[good]);
        many.count = 9;
        assert_eq!(answer_of(&many), None);
    }
}

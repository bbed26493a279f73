//! The aggregator names destinations from the DNS answers of its polls: the flow rows, the
//! interval records, the alerts, the services answer, and the cache's metrics.

use sensor_common::{FlowCounters, PROTO_TCP};

use super::*;
use crate::{dns::DnsAnswer, flow::identity::Process};

const MIB: u64 = 1 << 20;

/// pid 20 is `curl` in backup.service.
struct Live;
impl ProcessSource for Live {
    fn process(&self, pid: u32) -> Option<Process> {
        (pid == 20).then(|| Process {
            comm: "curl".into(),
            exe: "/usr/bin/curl".into(),
            uid: Some(0),
            service: "backup.service".into(),
            parents: Vec::new(),
            lineage: crate::flow::identity::Lineage::default(),
        })
    }
}

fn aggregator(dns: bool) -> Aggregator {
    let mut config = Config::default();
    config.detect.state_file = None;
    config.detect.burst.bytes = bytesize::ByteSize::b(10 * MIB);
    config.dns.enabled = dns;
    Aggregator::new(
        &config,
        Box::new(Live),
        ProcessTable::new(None),
        Metrics::new(&config.metrics, config.networks()),
    )
    .expect("config")
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn answer(name: &str, ttl: u32) -> DnsAnswer {
    DnsAnswer {
        pid: Some(20),
        name: name.into(),
        addrs: vec![("198.51.100.2".parse().expect("ip"), ttl)],
    }
}

/// pid 20's running totals to 198.51.100.2 on each port.
fn poll(secs: u64, sent: &[(u16, u64)], dns: Vec<DnsAnswer>) -> PollInput {
    let flows = sent
        .iter()
        .map(|(port, bytes)| {
            (
                crate::flow::flows::test_key(20, 2, *port, PROTO_TCP),
                FlowCounters {
                    sent: *bytes,
                    sends: 1,
                    ..FlowCounters::default()
                },
            )
        })
        .collect();
    PollInput {
        now: at(secs),
        events: Vec::new(),
        paths: Vec::new(),
        mounts: None,
        sums: KernelSums {
            flows,
            ..KernelSums::default()
        },
        took: Duration::from_millis(1),
        adopt: false,
        dns,
    }
}

fn flow_names(agg: &Aggregator) -> Vec<(u16, Option<String>)> {
    let Answer::Flows(flows) = agg.answer(&Query::Flows(Filter::default())) else {
        panic!("asked for flows");
    };
    let mut names: Vec<_> = flows
        .into_iter()
        .map(|f| (f.port, f.destination_name))
        .collect();
    names.sort();
    names
}

fn cache_gauge(agg: &Aggregator) -> String {
    Metrics::render(&agg.metrics.registry())
        .lines()
        .find(|l| l.starts_with("exfil_sensor_dns_cache_addresses "))
        .expect("the gauge")
        .to_owned()
}

#[test]
fn a_flow_is_named_by_the_answer_its_process_received_and_keeps_that_name() {
    let mut agg = aggregator(true);
    let (sinks, events) = std::sync::mpsc::channel();
    agg.on_alert(move |e| {
        let _ = sinks.send(e.clone());
    });
    // The lookup and the upload in one poll: the answer is taken first.
    agg.poll(&poll(
        0,
        &[(443, 20 * MIB)],
        vec![answer("upload.example.test", 60)],
    ));
    let interval = agg
        .poll(&poll(10, &[(443, 20 * MIB)], Vec::new()))
        .expect("10 s passed");
    assert_eq!(
        interval
            .flows
            .iter()
            .map(|f| (f.bytes_sent, f.destination_name.as_deref()))
            .collect::<Vec<_>>(),
        vec![(20 * MIB, Some("upload.example.test"))]
    );
    let raised: Vec<AlertEvent> = events.try_iter().collect();
    assert_eq!(
        raised
            .iter()
            .map(|e| (
                e.alert.kind.as_str(),
                e.alert.destination.as_str(),
                e.alert.destination_name.as_deref(),
                e.alert.summary.as_str()
            ))
            .collect::<Vec<_>>(),
        vec![(
            "burst",
            "198.51.100.2",
            Some("upload.example.test"),
            "backup.service sent 20.0 MiB to upload.example.test (198.51.100.2) within 300s"
        )]
    );
    assert_eq!(cache_gauge(&agg), "exfil_sensor_dns_cache_addresses 1");
    // The address answered again under another name: the row keeps the name it was made
    // with; a row made now takes the new one.
    agg.poll(&poll(
        15,
        &[(443, 21 * MIB), (8443, 5)],
        vec![answer("other.example.org", 60)],
    ));
    assert_eq!(
        flow_names(&agg),
        vec![
            (443, Some("upload.example.test".to_owned())),
            (8443, Some("other.example.org".to_owned()))
        ]
    );
    // The services answer names the address by its largest row.
    let Answer::Services(services) = agg.answer(&Query::Services(5)) else {
        panic!("asked for services");
    };
    assert_eq!(
        services[0]
            .destinations
            .iter()
            .map(|d| (d.destination.as_str(), d.destination_name.as_deref()))
            .collect::<Vec<_>>(),
        vec![("198.51.100.2", Some("upload.example.test"))]
    );
    // TTL 60 s + the default grace of 1 h after the last answer (15 s): a row made at
    // 3,675 s is named, one made at 3,676 s is not (the old rows keep theirs), and the
    // first interval to end after that prunes the cache.
    let late = |secs, ports: &[(u16, u64)]| {
        let mut sent = vec![(443, 22 * MIB), (8443, 6)];
        sent.extend_from_slice(ports);
        poll(secs, &sent, Vec::new())
    };
    agg.poll(&late(3_675, &[(9000, 1)]));
    agg.poll(&late(3_676, &[(9000, 1), (9001, 1)]));
    assert_eq!(
        flow_names(&agg),
        vec![
            (443, Some("upload.example.test".to_owned())),
            (8443, Some("other.example.org".to_owned())),
            (9000, Some("other.example.org".to_owned())),
            (9001, None),
        ]
    );
    assert_eq!(cache_gauge(&agg), "exfil_sensor_dns_cache_addresses 1");
    agg.poll(&late(3_686, &[(9000, 2), (9001, 2)]));
    assert_eq!(cache_gauge(&agg), "exfil_sensor_dns_cache_addresses 0");
}

#[test]
fn with_dns_off_nothing_is_named() {
    let mut agg = aggregator(false);
    agg.poll(&poll(
        0,
        &[(443, 20 * MIB)],
        vec![answer("upload.example.test", 60)],
    ));
    let interval = agg
        .poll(&poll(10, &[(443, 20 * MIB)], Vec::new()))
        .expect("10 s passed");
    assert_eq!(interval.flows[0].destination_name, None);
    assert_eq!(flow_names(&agg), vec![(443, None)]);
    let Answer::Alerts(alerts) = agg.answer(&Query::Alerts(Filter::default())) else {
        panic!("asked for alerts");
    };
    assert_eq!(
        alerts
            .iter()
            .map(|a| (a.destination_name.as_deref(), a.summary.as_str()))
            .collect::<Vec<_>>(),
        vec![(
            None,
            "backup.service sent 20.0 MiB to 198.51.100.2 within 300s"
        )]
    );
    assert_eq!(cache_gauge(&agg), "exfil_sensor_dns_cache_addresses 0");
}

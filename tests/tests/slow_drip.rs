//! Issue 11, scenario 4: the slow drip. A journal of a mail server's normal days (the normal
//! day of the scenarios: mail received from outside and relayed to an MX, office clients
//! syncing over IMAP, the nightly backup of the mail store and a database dump to the backup
//! host), then 20 MiB a day of IMAP downloads by one outside host, replayed by the real CLI on
//! the default config: nothing before the drip starts, and `slow_leak` naming Dovecot within
//! three simulated days of it. The journal is written here, as the agent writes it, one
//! record a minute.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use exfil_tests::run_cli;
use sensor::{
    flow::{
        class::Networks,
        interval::{Direction, FlowInterval, Interval, Protocol},
    },
    journal::{JournalConfig, Record, StartRecord, Writer},
};

const MIB: u64 = 1 << 20;
const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;
/// 2026-11-02T00:00:00Z, a Monday.
const T0: u64 = 1_793_577_600_000;
/// Normal days before the drip: past `new_destination`'s 7-day learning and `slow_leak`'s
/// four days of history.
const NORMAL_DAYS: u64 = 10;
const DRIP_DAYS: u64 = 4;
/// The drip: four sessions a day of 5 MiB each, to one outside host.
const DRIP_HOST: &str = "198.51.100.7";
const DRIP_SESSION: u64 = 5 * MIB;
const DRIP_HOURS: [u64; 4] = [3, 9, 15, 21];

/// The agent's config on that server: the default, the office and backup network internal,
/// one interval record a minute.
const CONFIG: &str = "[agent]\ninterval = \"1m\"\n\n[networks]\ninternal = [\"192.0.2.0/24\"]\n";

fn networks() -> Networks {
    Networks::new(&["192.0.2.0/24".parse().expect("net")])
}

/// One flow of a minute.
#[expect(clippy::too_many_arguments, reason = "a flow row is that wide")]
fn flow(
    service: &str,
    pid: u32,
    comm: &str,
    to: &str,
    port: u16,
    direction: Direction,
    sent: u64,
    received: u64,
) -> FlowInterval {
    let destination: IpAddr = to.parse().expect("an address");
    FlowInterval {
        service: service.into(),
        pid,
        comm: comm.into(),
        exe: format!("/usr/sbin/{comm}"),
        uid: Some(0),
        destination: Some(destination),
        destination_name: None,
        class: networks().classify(Some(destination)),
        port,
        protocol: Protocol::Tcp,
        direction,
        bytes_sent: sent,
        sends: sent.div_ceil(16_384),
        bytes_received: received,
        recvs: received.div_ceil(16_384),
    }
}

/// What the server does in minute `m` (from midnight) of a normal day: 500 messages a day
/// received from outside senders (business hours), 200 relayed to the MX, three office
/// clients syncing their mailboxes every 10 minutes in business hours, the nightly rsync of
/// the mail store and pg_dump to the backup host at 02:00.
fn normal_minute(day: u64, m: u64) -> Vec<FlowInterval> {
    let hour = m / 60;
    let business = (8..18).contains(&hour);
    let mut flows = Vec::new();
    // 500 messages over the 600 business minutes: five in six minutes, each ~60 KiB in,
    // ~600 bytes of SMTP replies out.
    if business && !m.is_multiple_of(6) {
        let sender = format!("198.51.100.{}", 30 + (m % 40));
        flows.push(flow(
            "postfix.service",
            1000 + u32::try_from(m).unwrap_or(0),
            "smtpd",
            &sender,
            25,
            Direction::Inbound,
            600,
            61_440,
        ));
    }
    // 200 relayed over the business hours: one in three minutes, ~64 KiB each.
    if business && m.is_multiple_of(3) {
        flows.push(flow(
            "postfix.service",
            2000,
            "smtp",
            "198.51.100.25",
            25,
            Direction::Outbound,
            65_536 + (day * 7 + m) % 4_096,
            400,
        ));
    }
    // Office clients: 2 MiB each every ten minutes of business hours.
    if business && m.is_multiple_of(10) {
        for client in 11..=13 {
            flows.push(flow(
                "dovecot.service",
                3000 + client,
                "imap",
                &format!("192.0.2.{client}"),
                143,
                Direction::Inbound,
                2 * MIB,
                4_096,
            ));
        }
    }
    // 02:00–02:14: the mail store (150 MiB) and the database dump (30 MiB) to the backup host.
    if (120..135).contains(&m) {
        flows.push(flow(
            "backup.service",
            4000,
            "rsync",
            "192.0.2.50",
            873,
            Direction::Outbound,
            10 * MIB,
            65_536,
        ));
        flows.push(flow(
            "backup.service",
            4001,
            "pg_dump",
            "192.0.2.50",
            22,
            Direction::Outbound,
            2 * MIB,
            1_024,
        ));
    }
    flows
}

/// The drip's minute: one 5 MiB session at each of `DRIP_HOURS`.
fn drip_minute(m: u64) -> Option<FlowInterval> {
    (m.is_multiple_of(60) && DRIP_HOURS.contains(&(m / 60))).then(|| {
        flow(
            "dovecot.service",
            5000 + u32::try_from(m).unwrap_or(0),
            "imap",
            DRIP_HOST,
            143,
            Direction::Inbound,
            DRIP_SESSION,
            700,
        )
    })
}

/// Writes the journal: a start record, then a record for every minute of the normal days and
/// the drip days.
fn write_journal(dir: &Path) {
    let config = JournalConfig {
        dir: dir.to_path_buf(),
        ..JournalConfig::default()
    };
    let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    let (mut writer, _) = Writer::open(&config, at(T0)).expect("journal");
    writer
        .append(
            &Record::Start(StartRecord {
                at_ms: T0,
                agent_version: env!("CARGO_PKG_VERSION").into(),
                hostname: "mail1".into(),
                config_source: "/etc/exfil-sensor/config.toml".into(),
                config_toml: CONFIG.into(),
                detect_state: None,
            }),
            at(T0),
        )
        .expect("start");
    for day in 0..NORMAL_DAYS + DRIP_DAYS {
        for m in 0..24 * 60 {
            let start_ms = T0 + day * DAY_MS + m * MINUTE_MS;
            let mut flows = normal_minute(day, m);
            if day >= NORMAL_DAYS {
                flows.extend(drip_minute(m));
            }
            let interval = Interval {
                start_ms,
                end_ms: start_ms + MINUTE_MS,
                flows,
                ..Interval::default()
            };
            writer
                .append(&Record::Interval(interval), at(start_ms + MINUTE_MS))
                .expect("interval");
        }
    }
    writer.sync().expect("sync");
}

fn rfc3339_ms(text: &str) -> u64 {
    sensor::detect::parse_rfc3339_ms(text).expect("an RFC 3339 time")
}

#[test]
fn a_20_mib_a_day_drip_is_a_slow_leak_within_three_days_and_nothing_comes_before_it() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("slow-drip-journal");
    let _ = std::fs::remove_dir_all(&dir);
    write_journal(&dir);

    let dir_arg = dir.to_str().expect("utf-8");
    let (code, out, err) = run_cli(&["journal", "verify", dir_arg]);
    assert_eq!(code, 0, "journal verify: {out}{err}");

    let (code, out, err) = run_cli(&["replay", dir_arg, "--format", "json"]);
    assert_eq!(code, 0, "replay: {err}");
    let alerts: Vec<serde_json::Value> = serde_json::from_str(&out).expect("replay JSON");
    let drip_start = T0 + NORMAL_DAYS * DAY_MS;
    let before: Vec<&serde_json::Value> = alerts
        .iter()
        .filter(|a| rfc3339_ms(a["raised_at"].as_str().expect("raised_at")) < drip_start)
        .collect();
    assert!(before.is_empty(), "alerts on normal days: {before:#?}");
    let leak = alerts
        .iter()
        .find(|a| a["kind"] == "slow_leak")
        .unwrap_or_else(|| panic!("no slow_leak; alerts: {alerts:#?}"));
    assert_eq!(leak["service"], "dovecot.service", "{leak:#}");
    assert_eq!(leak["destination"], DRIP_HOST, "{leak:#}");
    let after = rfc3339_ms(leak["raised_at"].as_str().expect("raised_at")) - drip_start;
    assert!(
        after <= 3 * DAY_MS,
        "slow_leak {:.1} days after the drip began",
        after as f64 / DAY_MS as f64
    );
    eprintln!(
        "slow_leak {:.2} days after the drip began; alerts: {:?}",
        after as f64 / DAY_MS as f64,
        alerts
            .iter()
            .map(|a| (
                a["kind"].as_str(),
                a["raised_at"].as_str(),
                a["bytes"].as_u64()
            ))
            .collect::<Vec<_>>()
    );
    // Only the drip is alerted on, once per rule: the new destination at its first session,
    // then one slow_leak episode that stays open across the drip's days (not one alert per
    // session).
    let kinds: Vec<&str> = alerts.iter().filter_map(|a| a["kind"].as_str()).collect();
    assert_eq!(kinds, ["new_destination", "slow_leak"]);
    for alert in &alerts {
        assert_eq!(
            (alert["service"].as_str(), alert["destination"].as_str()),
            (Some("dovecot.service"), Some(DRIP_HOST)),
            "{alert:#}"
        );
    }

    // The report: the drip's host, with every byte of it.
    let (code, out, err) = run_cli(&[
        "report",
        dir_arg,
        "--service",
        "dovecot.service",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "report: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("report JSON");
    let top = &report["destinations"][0];
    assert_eq!(top["destination"], DRIP_HOST);
    assert_eq!(
        top["bytes"].as_u64(),
        Some(DRIP_DAYS * DRIP_HOURS.len() as u64 * DRIP_SESSION)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

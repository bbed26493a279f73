//! Issue 11's normal day on a mail and database server, against the real Postfix, Dovecot
//! and PostgreSQL, with the agent past its learning period (`new_destination` live from the
//! first byte, the hardest case for false positives): it must raise no alert at all.
//!
//! The day, compressed into a couple of minutes with the issue's volumes:
//!
//! - 500 messages from the outside world (198.51.100.30), sent with `swaks` to Postfix on
//!   port 25, which delivers them into the Maildirs of the four users (150 MiB of mail
//!   already there);
//! - 200 messages submitted locally with Postfix's `sendmail`, which Postfix relays to the
//!   partner's MX at 198.51.100.25 (a small SMTP sink that counts what it receives);
//! - three office clients (192.0.2.11–13) sync their mailboxes over IMAP from Dovecot (a new
//!   account: every message of every folder);
//! - the nightly jobs, in `cron.service`: `rsync` of the whole mail store to the backup host
//!   192.0.2.50 (an rsync daemon there, behind a front door counting what it receives), a
//!   `pg_dump` of the patients database streamed there too, and a local `pg_dump` to disk.
//!
//! The agent's config is the default with the office network internal, the test's mail
//! store classed `mail_store` (as /var/vmail is by default), no learning period left, and
//! the shipped profiles, copied from `exfil-sensor config default`, plus one for the test's
//! simulated hosts (see [`OTHER_HOSTS`]). Besides no alert, the test checks the agent's bytes
//! against the other end where that is cheap: what Postfix sent the MX is what the MX
//! received, each office sync's bytes are Dovecot's `out=`, what rsync and the dump's uploader
//! sent is what the backup host received (every file of the store arriving), and what smtpd
//! received is what swaks sent.

use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use exfil_tests::{
    Agent, Flow, NetNs, POLL, Proc, ServiceCgroup, agent_bin,
    maildir::{self, MailUser},
    postgres::{Postgres, run_bounded},
    require_root,
    servers::{
        dovecot::{self, Dovecot},
        postfix::{self, Postfix},
        rsyncd::{self, BackupHost},
    },
    traffic,
};
use serde::Deserialize;

/// The mail store of scenario 1: four users, 150 MiB.
const USERS: [MailUser; 4] = maildir::SCENARIO_USERS;
const SEED: u64 = 0x6e6f_726d_616c_6461;
/// Messages received from outside, and relayed out: the issue's figures.
const INBOUND: usize = 500;
const OUTBOUND: usize = 200;
/// swaks runs at once: a few sending servers of the outside world.
const SENDERS: usize = 8;
/// The outside world's sending server, and the partner's MX.
const OUTSIDE_SENDER: &str = "198.51.100.30";
const MX: &str = "198.51.100.25";
/// The office clients, each syncing the mailbox of the user of the same index.
const OFFICE: [&str; 3] = ["192.0.2.11", "192.0.2.12", "192.0.2.13"];
const BACKUP_HOST: &str = "192.0.2.50";
/// The issue's patients table.
const PATIENTS: u32 = 200_000;
/// The unit of the nightly jobs.
const CRON: &str = "cron.service";
/// The office's web application, which sends its notifications with `sendmail`.
const WEBAPP: &str = "exfil-e2e-webapp.service";
/// The processes standing in for other machines (the hosts of the namespace: the sending
/// server, the MX, the office clients, the backup host's rsync daemon) run on this kernel,
/// so the agent sees them too, sending to this host's 198.51.100.1, to it an external
/// address: swaks alone sends it the 500 messages, a `new_destination` of whatever service
/// it ran in. On a real server the agent does not see the other machines. They run in this
/// unit, and the test's config gives it a profile allowing 198.51.100.1, so that nothing they
/// do is counted against the server: the one addition to the shipped profiles, for the test
/// bench only.
const OTHER_HOSTS: &str = "exfil-e2e-other-hosts.service";
/// The agent's interval (the default): an interval's alerts come at most this long after it.
const INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Deserialize)]
#[expect(dead_code, reason = "read through Debug when the test fails")]
struct Alert {
    kind: String,
    service: String,
    destination: String,
    port: u16,
    pid: u32,
    comm: String,
    bytes: u64,
    status: String,
    class: Option<String>,
    summary: String,
}

/// The shipped profiles: the `[[detect.profile]]` tables of the default config, verbatim (a
/// config that has any replaces them all).
fn shipped_profiles() -> String {
    let out = Command::new(agent_bin())
        .args(["config", "default"])
        .output()
        .expect("exfil-sensor config default");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let start = text.find("[[detect.profile]]").expect("shipped profiles");
    let end = start
        + text[start..]
            .find("\n[alerts]")
            .expect("[alerts] after them");
    text[start..end].to_owned()
}

fn config(mail_root: &Path) -> String {
    let defaults = r#""/var/mail", "/var/vmail", "/var/spool/mail", "~/Maildir", "~/mail""#;
    format!(
        "[networks]\ninternal = [\"192.0.2.0/24\"]\n\
         [files]\nmail_store = [{defaults}, \"{root}\"]\n\
         [detect.new_destination]\nlearning = \"0s\"\n\
         {profiles}\n\
         # The test bench's simulated hosts (see OTHER_HOSTS in tests/tests/normal_day.rs).\n\
         [[detect.profile]]\nname = \"test-bench-other-hosts\"\n\
         services = [\"{OTHER_HOSTS}\"]\nallow = [\"198.51.100.1/32\"]\n",
        root = mail_root.display(),
        profiles = shipped_profiles(),
    )
}

/// A directory under the target's temporary directory, removed on drop.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` to its end (within `limit`), which must succeed; its stdout.
fn run_ok(cmd: &mut Command, limit: Duration) -> String {
    let out = run_bounded(cmd, limit).unwrap_or_else(|e| panic!("{cmd:?}: {e:#}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The flows the agent counts that `select`, once `done` holds for them together (or 10 s
/// passed), two polls later.
fn settled_flows(
    agent: &Agent,
    select: impl Fn(&Flow) -> bool,
    done: impl Fn(&[Flow]) -> bool,
) -> Vec<Flow> {
    let find = || -> Vec<Flow> {
        patiently("/api/v1/flows", || agent.flows())
            .into_iter()
            .filter(|f| select(f))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !done(&find()) {
        std::thread::sleep(POLL / 2);
    }
    std::thread::sleep(POLL * 2);
    find()
}

/// `ask`'s answer; asked again (each second, for at most a minute) while the API times out:
/// the agent sees the whole kernel, and on a machine busy with other runs its answers can
/// take longer than the harness's 5 s.
fn patiently<T>(what: &str, ask: impl Fn() -> anyhow::Result<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ask() {
            Ok(answer) => return answer,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what}: {e:#}; asking again");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => panic!("{what}: {e:#}"),
        }
    }
}

fn sent(flows: &[Flow]) -> u64 {
    flows.iter().map(|f| f.bytes_sent).sum()
}

fn received(flows: &[Flow]) -> u64 {
    flows.iter().map(|f| f.bytes_received).sum()
}

/// `Total bytes sent: 157,286,400` of `rsync --stats`.
fn rsync_stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no `{name}` in rsync's stats:\n{stats}"))
        .trim()
        .replace(',', "")
        .parse()
        .expect("a number")
}

#[test]
fn a_normal_day_of_mail_and_backups_raises_no_alert() {
    require_root();
    let test_start = Instant::now();
    let ns = NetNs::outside().expect("namespace");
    for host in [OUTSIDE_SENDER, MX, BACKUP_HOST].iter().chain(&OFFICE) {
        ns.add_host(host).expect("a host of the namespace");
    }
    // Made before the processes placed in them, so removed after those are gone.
    let other_hosts = ServiceCgroup::create(OTHER_HOSTS).expect("cgroup");
    let cron = ServiceCgroup::create(CRON).expect("cgroup");
    let webapp = ServiceCgroup::create(WEBAPP).expect("cgroup");
    let scratch = ScratchDir(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("normal-day-{}", std::process::id())),
    );
    let dir = &scratch.0;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("scratch dir");

    // The server's state at dawn: the mail store, the patients database.
    let setting_up = Instant::now();
    let dovecot = Dovecot::start(&dir.join("dovecot"), ns.host_ip, &USERS).expect("dovecot");
    let mail_owner = dovecot::mail_owner().expect("the mail user");
    let store =
        maildir::generate(&dovecot.mail_root(), &USERS, mail_owner, SEED).expect("the mail store");
    let pg = Postgres::start(&ns).expect("postgres");
    pg.load_patients(PATIENTS).expect("patients");
    let names: Vec<&str> = USERS.iter().map(|u| u.name).collect();
    let mx = SocketAddrV4::new(MX.parse().expect("IPv4"), 25);
    let postfix = Postfix::start(
        &dir.join("postfix"),
        ns.host_ip,
        &dovecot.mail_root(),
        mail_owner,
        &names,
        mx,
    )
    .expect("postfix");

    // The outside world: the partner's MX, the backup host's rsync daemon.
    let mut mx_sink = {
        let mut cmd = ns.command(Path::new("/usr/bin/python3"));
        cmd.arg("-I")
            .arg("-c")
            .arg(include_str!("../src/servers/smtp_sink.py"))
            .arg(MX)
            .arg("25");
        other_hosts.place(&mut cmd).expect("place the MX");
        let mut sink = Proc::spawn(cmd, "the MX (smtp_sink.py)").expect("the MX");
        sink.expect_line::<String>("listening")
            .expect("the MX listens");
        sink
    };
    let backup_host = BackupHost::start(&ns, BACKUP_HOST, &dir.join("backup-host"), &other_hosts)
        .expect("the backup host");
    // The day's mail, made before it starts.
    let inbound = maildir::messages(&names, INBOUND, SEED ^ 1);
    let inbound_dir = dir.join("inbound");
    std::fs::create_dir(&inbound_dir).expect("inbound dir");
    for (i, m) in inbound.iter().enumerate() {
        std::fs::write(inbound_dir.join(format!("{i}.eml")), m).expect("a message file");
    }
    let outbound = maildir::messages(&["reply"], OUTBOUND, SEED ^ 2);
    let set_up_in = setting_up.elapsed();

    let agent = Agent::start_with(&config(&dovecot.mail_root())).expect("agent");
    let day = Instant::now();

    // Mail in and out at once: the outside world's servers send with swaks, users of the
    // office's applications with sendmail.
    let smtp = postfix.addr().to_string();
    let names = &names;
    std::thread::scope(|s| {
        for worker in 0..SENDERS {
            let (ns, other_hosts, smtp, inbound_dir) = (&ns, &other_hosts, &smtp, &inbound_dir);
            s.spawn(move || {
                for i in (worker..INBOUND).step_by(SENDERS) {
                    let to = format!("{}@{}", names[i % names.len()], postfix::DOMAIN);
                    let mut cmd = ns.command(Path::new("/usr/bin/swaks"));
                    cmd.args(["--server", smtp, "--local-interface", OUTSIDE_SENDER])
                        .args(["--helo", "mx.sender.example", "--from"])
                        .arg(format!("news{i}@sender.example"))
                        .args(["--to", &to, "--silent", "2", "--data"])
                        .arg(format!(
                            "@{}",
                            inbound_dir.join(format!("{i}.eml")).display()
                        ));
                    other_hosts.place(&mut cmd).expect("place swaks");
                    run_ok(&mut cmd, Duration::from_secs(60));
                }
            });
        }
        let (postfix, outbound, webapp) = (&postfix, &outbound, &webapp);
        s.spawn(move || {
            for (i, m) in outbound.iter().enumerate() {
                let from = format!("{}@{}", names[i % names.len()], postfix::DOMAIN);
                let to = format!("contact{i}@partner.example");
                postfix
                    .sendmail(&from, &[&to], m, Some(webapp))
                    .expect("sendmail");
            }
        });
    });
    let deliveries = postfix
        .wait_delivered(INBOUND + OUTBOUND, Duration::from_secs(120))
        .expect("every message delivered");
    let mut by_relay: BTreeMap<(String, String), usize> = BTreeMap::new();
    for d in &deliveries {
        *by_relay
            .entry((d.agent.clone(), d.relay.clone()))
            .or_default() += 1;
    }
    assert_eq!(
        by_relay,
        BTreeMap::from([
            (("smtp".to_owned(), format!("{MX}[{MX}]:25")), OUTBOUND),
            (("virtual".to_owned(), "virtual".to_owned()), INBOUND),
        ])
    );
    let mail_in = Instant::now() - day;

    // The MX's count, once Postfix has closed its cached connections.
    mx_sink.resume().expect("tell the MX");
    let mx_received: u64 = mx_sink.expect_line("received").expect("received");
    let mx_sent: u64 = mx_sink.expect_line("sent").expect("sent");
    let mx_connections: u64 = mx_sink.expect_line("connections").expect("connections");
    let mx_messages: u64 = mx_sink.expect_line("messages").expect("messages");
    let mx_data: u64 = mx_sink.expect_line("data").expect("data");
    mx_sink.finish().expect("the MX exits");
    assert_eq!(mx_messages, OUTBOUND as u64);

    // The office: three mail clients sync their users' mailboxes (the day's mail included).
    let syncs: Vec<dovecot::Fetched> = std::thread::scope(|s| {
        let handles: Vec<_> = OFFICE
            .iter()
            .zip(&USERS)
            .map(|(client, user)| {
                let (ns, dovecot, other_hosts) = (&ns, &dovecot, &other_hosts);
                s.spawn(move || {
                    dovecot::sync_mailbox(ns, dovecot.addr(), client, user, other_hosts)
                        .expect("an office sync")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a sync thread"))
            .collect()
    });
    for ((user, fetched), i) in USERS.iter().zip(&syncs).zip(0..) {
        let delivered_to_user = (0..INBOUND).filter(|m| m % USERS.len() == i).count() as u64;
        assert_eq!(
            fetched.messages,
            store.user_totals(user.name).0 + delivered_to_user,
            "{}",
            user.name
        );
    }
    let synced_in = Instant::now() - day;

    // The night: the mail store to the backup host, the database there and to local disk.
    let rsync_stats = {
        let mut cmd = Command::new("rsync");
        cmd.args(["-a", "--stats"])
            .arg(format!("{}/", dovecot.mail_root().display()))
            .arg(format!("rsync://{BACKUP_HOST}/backup/mail/"));
        cron.place(&mut cmd).expect("place rsync");
        run_ok(&mut cmd, Duration::from_secs(120))
    };
    // The whole store arrived, and the backup host counted what it received.
    let backed_up = rsyncd::files_under(&backup_host.store().join("mail")).expect("the backup");
    let store_files = rsyncd::files_under(&dovecot.mail_root()).expect("the store");
    assert_eq!(
        (backed_up.len(), backed_up.values().sum::<u64>()),
        (store_files.len(), store_files.values().sum::<u64>())
    );
    let differing: Vec<_> = store_files
        .iter()
        .filter(|(path, size)| backed_up.get(*path) != Some(size))
        .map(|(path, _)| path)
        .chain(backed_up.keys().filter(|p| !store_files.contains_key(*p)))
        .take(5)
        .collect();
    assert!(
        differing.is_empty(),
        "backup and store differ: {differing:?}"
    );
    let rsync_wire = backup_host.finish().expect("the backup host's count");
    let (mut dump_sink, dump_port) = traffic!()
        .sink(&ns, "tcp", BACKUP_HOST)
        .expect("the backup host's dump sink");
    {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!(
                "set -o pipefail; {} -h 127.0.0.1 -p {} -Fc | socat -u STDIN TCP:{BACKUP_HOST}:{dump_port}",
                pg.tool("pg_dump").display(),
                pg.port
            ))
            .envs(pg.client_env());
        cron.place(&mut cmd).expect("place the dump");
        run_ok(&mut cmd, Duration::from_secs(120));
    }
    let dump_received: u64 = dump_sink.expect_line("received").expect("received");
    let local_dump = dir.join("clinic.dump");
    {
        let mut cmd = Command::new(pg.tool("pg_dump"));
        cmd.args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-Fc", "-f"])
            .arg(&local_dump)
            .envs(pg.client_env());
        cron.place(&mut cmd).expect("place the local dump");
        run_ok(&mut cmd, Duration::from_secs(120));
    }
    let local_dump_size = std::fs::metadata(&local_dump).expect("the dump").len();
    let day_took = day.elapsed();

    // The last interval in: every byte of the day has been through detection.
    std::thread::sleep(INTERVAL + POLL * 5);
    let alerts: Vec<Alert> = patiently("/api/v1/alerts", || agent.get_json("/api/v1/alerts"));
    // Every process was named: the agent sees the whole kernel, and a burst of processes
    // elsewhere on the machine (another test run) that fills the process events' ring leaves
    // some of the day's short-lived ones (swaks) nameless, their bytes counted to a service
    // `unknown`, which is then a `new_destination` of its own. That is a disturbed run, not
    // the normal day's finding: said first.
    let lost_events = patiently("the drop counter", || {
        agent.metric("exfil_sensor_kernel_drops_total{map=\"process_events\"}")
    });
    assert_eq!(
        lost_events, 0,
        "process events were dropped during the day (other load on this kernel?); alerts: \
         {alerts:#?}"
    );
    if !alerts.is_empty() {
        eprintln!("alerts on a normal day: {alerts:#?}");
        let metrics = agent.metrics_text().unwrap_or_default();
        for line in metrics.lines().filter(|l| {
            !l.starts_with('#')
                && (l.contains("drops") || l.contains("errors") || l.contains("poll"))
        }) {
            eprintln!("{line}");
        }
    }

    // Exact where cheap. Postfix's smtp processes sent the MX what it received.
    let to_mx = settled_flows(
        &agent,
        |f| f.service == postfix::UNIT && f.destination == MX,
        |flows| sent(flows) >= mx_received,
    );
    // A destination Postfix never used, external, far over new_destination's 1 MiB: no alert
    // only because the `postfix` profile says it talks to many hosts.
    let kinds: std::collections::BTreeSet<(&str, &str)> = to_mx
        .iter()
        .map(|f| (f.comm.as_str(), f.class.as_str()))
        .collect();
    assert_eq!(kinds, [("smtp", "external")].into());
    // Not so the other way: Postfix does not read the MX's answer to QUIT
    // (`smtp_skip_quit_response = yes`, its default), which the MX did send.
    assert_eq!(sent(&to_mx), mx_received, "{to_mx:?}");
    // Both ends of the inbound SMTP connections: what swaks sent, smtpd received.
    let from_outside = settled_flows(
        &agent,
        |f| f.service == postfix::UNIT && f.destination == OUTSIDE_SENDER,
        |_| true,
    );
    let swaks = settled_flows(
        &agent,
        |f| f.service == OTHER_HOSTS && f.comm == "swaks" && f.destination == ns.host_ip,
        |_| true,
    );
    assert_eq!(
        (received(&from_outside), sent(&from_outside)),
        (sent(&swaks), received(&swaks))
    );
    // Each office sync: the imap process's bytes to the client are Dovecot's `out=`.
    for (client, user) in OFFICE.iter().zip(&USERS) {
        let login = dovecot
            .logins()
            .into_iter()
            .find(|l| l.rip == *client)
            .expect("the client's login");
        assert_eq!(login.user, user.name);
        let session = dovecot
            .session_of(login.mail_pid, Duration::from_secs(10))
            .expect("its session's end");
        let flows = settled_flows(
            &agent,
            |f| f.pid == login.mail_pid && f.destination == *client,
            |flows| sent(flows) >= session.output,
        );
        let flows: Vec<_> = flows
            .iter()
            .map(|f| (f.port, f.class.as_str(), f.bytes_sent))
            .collect();
        assert_eq!(
            flows,
            [(dovecot::IMAP_PORT, "internal", session.output)],
            "{client}"
        );
    }
    // The dump the backup host received is what socat sent it.
    let upload = settled_flows(
        &agent,
        |f| f.service == CRON && f.comm == "socat" && f.destination == BACKUP_HOST,
        |flows| sent(flows) >= dump_received,
    );
    assert_eq!(sent(&upload), dump_received);
    // rsync sent the backup host what it received, and received what it sent. (rsync's own
    // stats leave out the daemon protocol's greeting and module exchange before the
    // transfer, about a hundred bytes each way: shown, not compared.)
    let to_backup = settled_flows(
        &agent,
        |f| f.service == CRON && f.comm == "rsync" && f.destination == BACKUP_HOST,
        |flows| sent(flows) >= rsync_wire.to_server,
    );
    assert!(
        !to_backup.is_empty() && to_backup.iter().all(|f| f.class == "internal"),
        "{to_backup:?}"
    );
    assert_eq!(
        (sent(&to_backup), received(&to_backup)),
        (rsync_wire.to_server, rsync_wire.from_server),
        "{to_backup:?}"
    );
    let rsync_sent = rsync_stat(&rsync_stats, "Total bytes sent");
    let rsync_received = rsync_stat(&rsync_stats, "Total bytes received");

    eprintln!(
        "set-up {set_up_in:?} (store: {} messages, {} bytes); day: mail in and out after \
         {mail_in:?}, synced after {synced_in:?}, nightly jobs done after {day_took:?}; \
         inbound {} bytes of messages, smtpd received {} bytes from {OUTSIDE_SENDER}; MX: \
         {mx_connections} connections, {mx_messages} messages, {mx_data} bytes of DATA, {} \
         received ({mx_sent} sent, {} read by Postfix); office syncs (messages, bytes): \
         {:?}; rsync: agent {} sent / {} received, the backup host {} / {}, rsync's stats \
         {} / {} ({} files); pg_dump to the backup host {dump_received} bytes, to disk {local_dump_size}; \
         test {:?}",
        store.messages(),
        store.bytes(),
        inbound.iter().map(Vec::len).sum::<usize>(),
        received(&from_outside),
        mx_received,
        received(&to_mx),
        syncs
            .iter()
            .map(|f| (f.messages, f.received))
            .collect::<Vec<_>>(),
        sent(&to_backup),
        received(&to_backup),
        rsync_wire.to_server,
        rsync_wire.from_server,
        rsync_sent,
        rsync_received,
        backed_up.len(),
        test_start.elapsed()
    );
    assert!(alerts.is_empty(), "alerts on a normal day: {alerts:#?}");
}

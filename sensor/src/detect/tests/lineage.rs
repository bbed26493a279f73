//! `lineage`: through a shell, by half of a small read, for secrets, and through a written
//! archive to an unrelated uploader; never for a profile that reads for its work.

use super::*;

#[test]
fn lineage_a_shell_reads_the_mail_store_and_its_curl_sends_it_out() {
    let mut feed = Feed::with_defaults();
    let shell = "session-3.scope";
    let procs = || {
        vec![
            process(100, "tar", shell, Some(50), &[50]),
            process(101, "curl", shell, Some(50), &[50]),
        ]
    };
    // tar reads 40 MiB of mail: threshold min(10 MiB, max(20 MiB, 1 MiB)) = 10 MiB.
    let events = feed.files(
        vec![read(shell, 100, "tar", "mail_store", (1, 500), 40 * MIB)],
        &procs(),
    );
    assert!(events.is_empty());
    let events = feed.sends(
        vec![send(shell, 101, "curl", "198.51.100.8", 9 * MIB)],
        &procs(),
    );
    assert!(events.is_empty(), "9 MiB is below 10: {events:?}");
    let events = feed.sends(
        vec![send(shell, 101, "curl", "198.51.100.8", MIB)],
        &procs(),
    );
    let alerts = raised(&events);
    assert_eq!(alerts.len(), 1, "{events:?}");
    let a = alerts[0];
    assert_eq!(
        (
            a.kind.as_str(),
            a.service.as_str(),
            a.destination.as_str(),
            a.bytes,
            a.class.as_deref(),
            a.comm.as_str()
        ),
        (
            "lineage",
            shell,
            "198.51.100.8",
            10 * MIB,
            Some("mail_store"),
            "curl"
        )
    );
    assert!(a.description.contains("tar"), "{}", a.description);
}

#[test]
fn lineage_is_half_of_a_small_read_but_never_for_a_profile_that_reads_for_its_work() {
    let mut feed = Feed::with_defaults();
    let procs = vec![process(7, "python3", "x.service", Some(7), &[])];
    feed.files(
        vec![read("x.service", 7, "python3", "records", (1, 9), 4 * MIB)],
        &procs,
    );
    let events = feed.sends(
        vec![send("x.service", 7, "python3", "198.51.100.9", 2 * MIB - 1)],
        &procs,
    );
    assert!(events.is_empty());
    let events = feed.sends(
        vec![send("x.service", 7, "python3", "198.51.100.9", 1)],
        &procs,
    );
    assert_eq!(raised(&events).len(), 1, "half of 4 MiB");

    // dovecot reads mail and serves it to an external client: its job.
    let procs = vec![process(20, "imap", "dovecot.service", Some(1), &[10])];
    feed.files(
        vec![read(
            "dovecot.service",
            20,
            "imap",
            "mail_store",
            (1, 10),
            40 * MIB,
        )],
        &procs,
    );
    let events = feed.sends(
        vec![send(
            "dovecot.service",
            20,
            "imap",
            "198.51.100.20",
            30 * MIB,
        )],
        &procs,
    );
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn lineage_for_secrets_is_a_send_as_large_as_the_file() {
    let mut feed = Feed::with_defaults();
    let procs = vec![process(9, "cat", "y.service", None, &[])];
    feed.files(
        vec![read("y.service", 9, "cat", "secrets", (1, 3), 3_000)],
        &procs,
    );
    let events = feed.sends(
        vec![send("y.service", 9, "cat", "198.51.100.3", 2_999)],
        &procs,
    );
    assert!(events.is_empty());
    let events = feed.sends(vec![send("y.service", 9, "cat", "198.51.100.3", 1)], &procs);
    let alerts = raised(&events);
    assert_eq!(
        alerts
            .iter()
            .map(|a| (a.kind.as_str(), a.bytes, a.class.as_deref()))
            .collect::<Vec<_>>(),
        vec![("lineage", 3_000, Some("secrets"))]
    );
}

#[test]
fn lineage_follows_an_archive_from_its_writer_to_an_unrelated_uploader() {
    let mut feed = Feed::with_defaults();
    let archive = (2049, 777);
    let tar = vec![process(200, "tar", "a.service", Some(200), &[])];
    let events = feed.files(
        vec![
            read("a.service", 200, "tar", "records", (2049, 1), 20 * MIB),
            write("a.service", 200, "tar", archive, 5 * MIB),
        ],
        &tar,
    );
    assert!(events.is_empty());
    // Another service, another session: only the file links them.
    let up = vec![process(300, "python3", "b.service", Some(300), &[])];
    feed.files(
        vec![read("b.service", 300, "python3", "other", archive, 5 * MIB)],
        &up,
    );
    // Threshold: min(10 MiB, max(half of the 5 MiB archive, 1 MiB)) = 2.5 MiB.
    let events = feed.sends(
        vec![send(
            "b.service",
            300,
            "python3",
            "198.51.100.9",
            5 * MIB / 2 - 1,
        )],
        &up,
    );
    assert!(events.is_empty());
    let events = feed.sends(
        vec![send("b.service", 300, "python3", "198.51.100.9", 1)],
        &up,
    );
    let alerts = raised(&events);
    assert_eq!(alerts.len(), 1, "{events:?}");
    assert_eq!(
        (
            alerts[0].service.as_str(),
            alerts[0].class.as_deref(),
            alerts[0].bytes
        ),
        ("b.service", Some("records"), 5 * MIB / 2)
    );
    assert!(
        alerts[0].description.contains("/data/777"),
        "{}",
        alerts[0].description
    );

    // The same shapes without the write: nothing.
    let mut feed = Feed::with_defaults();
    feed.files(
        vec![read(
            "a.service",
            200,
            "tar",
            "records",
            (2049, 1),
            20 * MIB,
        )],
        &[process(200, "tar", "a.service", Some(200), &[])],
    );
    let up = vec![process(300, "python3", "b.service", Some(300), &[])];
    feed.files(
        vec![read("b.service", 300, "python3", "other", archive, 5 * MIB)],
        &up,
    );
    let events = feed.sends(
        vec![send("b.service", 300, "python3", "198.51.100.9", 20 * MIB)],
        &up,
    );
    assert!(events.is_empty(), "{events:?}");
}

/// A database backend (`postgres` of `service`) sending `bytes` of rows to a local client
/// on port 5432, and the client (`pg_dump`, pid 600 of `shell.service`) receiving them.
fn served_over_loopback(service: &str, bytes: u64) -> Vec<FlowInterval> {
    use crate::flow::interval::Direction;
    let backend = FlowInterval {
        port: 5432,
        direction: Direction::Inbound,
        bytes_received: 300,
        ..send(service, 500, "postgres", "127.0.0.1", bytes)
    };
    let client = FlowInterval {
        port: 5432,
        bytes_sent: 300,
        bytes_received: bytes,
        ..send("shell.service", 600, "pg_dump", "127.0.0.1", 0)
    };
    vec![backend, client]
}

#[test]
fn lineage_follows_rows_a_database_served_over_loopback_to_a_dump_and_its_upload() {
    let dump = (2049, 900);
    for (server, expected) in [("postgresql.service", 1), ("cache.service", 0)] {
        let mut feed = Feed::with_defaults();
        // pg_dump receives 70 MiB of rows from the backend and writes a 30 MiB dump.
        let events = feed.step(
            served_over_loopback(server, 70 * MIB),
            vec![write("shell.service", 600, "pg_dump", dump, 30 * MIB)],
            vec![
                process(500, "postgres", server, None, &[400]),
                process(600, "pg_dump", "shell.service", Some(600), &[]),
            ],
        );
        assert!(events.is_empty(), "{events:?}");
        // Another service uploads the dump.
        let up = vec![process(700, "socat", "up.service", Some(700), &[])];
        feed.files(
            vec![read("up.service", 700, "socat", "other", dump, 30 * MIB)],
            &up,
        );
        let events = feed.sends(
            vec![send("up.service", 700, "socat", "198.51.100.9", 30 * MIB)],
            &up,
        );
        let alerts: Vec<_> = raised(&events)
            .iter()
            .map(|a| (a.service.clone(), a.bytes, a.class.clone()))
            .collect();
        // Only a profile that serves records makes its rows a taint.
        let want = [(
            "up.service".to_owned(),
            30 * MIB,
            Some("records".to_owned()),
        )];
        assert_eq!(alerts, want[..expected], "server {server}");
    }
}

//! PostgreSQL as a database server runs it, started by the test rather than by systemd: a
//! cluster of its own (`initdb`) under `/var/lib/postgresql`, so that its files are what the
//! default config classes `records`; the postmaster in the foreground, as the `postgres` user,
//! inside `system.slice/postgresql.service` so that it and its backends resolve to that
//! service; listening on loopback and on this host's end of the test namespace, with
//! password (SCRAM) logins for a clinic's application role from 198.51.100.0/24 and
//! 192.0.2.0/24. Fast shutdown and everything removed on drop.

use std::{
    io::Read as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{NetNs, ServiceCgroup};

/// The unit the Debian package runs the server as (`postgresql@15-main.service` for one
/// cluster; the profile's `postgresql*.service` matches both).
pub const UNIT: &str = "postgresql.service";
/// The application's role and database: what an intruder who found the app's credentials
/// logs in as.
pub const DATABASE: &str = "clinic";
pub const USER: &str = "clinic";
pub const PASSWORD: &str = "clinic-e2e-not-a-secret";
/// The cluster's superuser (`postgres`, as initdb names it after the system user).
const SUPERUSER: &str = "postgres";
const SUPERUSER_PASSWORD: &str = "postgres-e2e-not-a-secret";
/// Where the clusters of the tests live: under the default `records` pattern.
const CLUSTERS: &str = "/var/lib/postgresql";
const PREFIX: &str = "exfil-e2e-";

/// The `patients` table: realistic columns, each row made from its id alone, so the table
/// is the same on every run; about 400 bytes a row in `COPY` text.
const PATIENTS: &str = "\
CREATE TABLE patients (
    id              integer PRIMARY KEY,
    nhs_number      text NOT NULL,
    given_name      text NOT NULL,
    family_name     text NOT NULL,
    date_of_birth   date NOT NULL,
    sex             char(1) NOT NULL,
    address         text NOT NULL,
    postcode        text NOT NULL,
    phone           text NOT NULL,
    email           text NOT NULL,
    diagnosis_codes text[] NOT NULL,
    notes           text NOT NULL
);
INSERT INTO patients
SELECT i,
       lpad(((i::bigint * 7919) % 10000000000)::text, 10, '0'),
       (ARRAY['Olivia','Amelia','Isla','Ava','Mia','Noah','Oliver','George','Arthur','Leo',
              'Freya','Lily','Harry','Oscar','Grace','Jack','Sophia','Theo','Ella','Henry'])[1 + i % 20],
       (ARRAY['Smith','Jones','Taylor','Brown','Williams','Wilson','Johnson','Davies','Patel',
              'Robinson','Wright','Thompson','Evans','Walker','White','Roberts','Green','Hall',
              'Wood','Jackson','Clarke','Khan','Hughes','Edwards'])[1 + (i / 20) % 24],
       date '1930-01-01' + (i * 37) % 32000,
       (ARRAY['F','M'])[1 + i % 2],
       (1 + i % 250) || ' ' || (ARRAY['High Street','Station Road','Church Lane','Victoria Road',
              'Green Lane','Manor Road','Park Avenue','Mill Lane'])[1 + i % 8] || ', Flat '
              || (i % 40) || ', ' || (ARRAY['Leeds','Bristol','Norwich','Exeter','Derby','York'])[1 + i % 6],
       (ARRAY['LS','BS','NR','EX','DE','YO'])[1 + i % 6] || (1 + i % 29) || ' ' || (i % 10)
              || chr(65 + i % 26) || chr(65 + (i / 26) % 26),
       '07' || lpad(((i::bigint * 104729) % 1000000000)::text, 9, '0'),
       'patient' || i || '@example.org',
       ARRAY[chr(65 + i % 26) || lpad((i % 100)::text, 2, '0') || '.' || (i % 10),
             chr(65 + (i / 7) % 26) || lpad(((i / 7) % 100)::text, 2, '0')],
       'Seen ' || to_char(date '2020-01-01' + i % 1500, 'YYYY-MM-DD') || ': ' || md5(i::text)
              || md5((i + 1)::text) || ' ' || md5((i * 3)::text) || md5((i * 5)::text) || ' plan '
              || md5((i * 7)::text) || md5((i * 11)::text)
FROM generate_series(1, ROWS) AS i;
";

/// The newest PostgreSQL installed: `/usr/lib/postgresql/N/bin` (Debian keeps each major
/// version apart; `/usr/bin/pg_dump` is a wrapper that picks one).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("/usr/lib/postgresql: is the postgresql package installed (`cargo xtask setup`)?")?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no /usr/lib/postgresql/N/bin/postgres")
}

/// Runs `cmd` to its end, or kills it after `limit`; its output either way.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> anyhow::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let status = wait_within(&mut child, limit, &format!("{cmd:?}"))?;
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Waits for `child` to exit, or kills it after `limit` and says `what` did not finish.
pub fn wait_within(child: &mut Child, limit: Duration, what: &str) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Like [`run_bounded`], and an error naming the command and its stderr unless it succeeded;
/// its stdout.
fn run_ok(cmd: &mut Command, limit: Duration) -> anyhow::Result<String> {
    let out = run_bounded(cmd, limit)?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `postgres` system user's uid and gid: the server binaries refuse to run as root.
fn postgres_ids() -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            // name:password:uid:gid:…
            let mut fields = line.split(':');
            if fields.next()? != "postgres" {
                return None;
            }
            let uid = fields.nth(1)?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some((uid, gid))
        })
        .context("no `postgres` user in /etc/passwd (the postgresql package makes it)")
}

/// A command run as the `postgres` user (exec'd by setpriv: the process is the program's).
fn as_postgres(program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
    ])
    .arg(program);
    cmd
}

/// Removes clusters that runs killed before their drop left behind (named by their pid).
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(CLUSTERS) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A running PostgreSQL cluster of the test's own.
pub struct Postgres {
    /// The postmaster (setpriv exec'd into it).
    child: Child,
    bin: PathBuf,
    /// `/var/lib/postgresql/exfil-e2e-<pid>-<n>`: the data directory, the socket directory
    /// and the server's log.
    root: PathBuf,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    log: PathBuf,
    /// Removed after the server stopped (a cgroup with processes cannot be).
    cgroup: Option<ServiceCgroup>,
}

impl Postgres {
    /// initdb, then the server in `postgresql.service`, listening on loopback and on `ns`'s
    /// host end (the namespace must exist first), with the `clinic` role and database.
    pub fn start(ns: &NetNs) -> anyhow::Result<Self> {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let bin = bin_dir()?;
        let (uid, gid) = postgres_ids()?;
        remove_stale_clusters();
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = Path::new(CLUSTERS).join(format!("{PREFIX}{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        std::os::unix::fs::chown(&root, Some(uid), Some(gid))?;
        let data = root.join("data");
        let socket_dir = root.join("run");
        std::fs::create_dir(&socket_dir)?;
        std::os::unix::fs::chown(&socket_dir, Some(uid), Some(gid))?;
        let log = root.join("server.log");
        // A free port, bound here and released.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let cgroup = ServiceCgroup::create(UNIT)?;

        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD)?;
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
        run_ok(
            as_postgres(&bin.join("initdb"))
                .current_dir(&root)
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    SUPERUSER,
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    // The test's cluster is thrown away: no fsync of its files.
                    "--no-sync",
                    "--no-instructions",
                ])
                .arg(format!("--pwfile={}", pwfile.display())),
            Duration::from_secs(60),
        )?;
        std::fs::remove_file(&pwfile)?;
        // initdb allows loopback and the socket; the outside world and the office too, for
        // the application's role only.
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba)?;
        rules.push_str(&format!(
            "host all {USER} 198.51.100.0/24 scram-sha-256\nhost all {USER} 192.0.2.0/24 scram-sha-256\n"
        ));
        std::fs::write(&hba, rules)?;

        let log_file = std::fs::File::create(&log)?;
        let mut server = as_postgres(&bin.join("postgres"));
        server
            .current_dir(&root)
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&socket_dir)
            .args(["-p", &port.to_string()])
            .args(["-c", &format!("listen_addresses=127.0.0.1,{}", ns.host_ip)])
            // Thrown away at the end: nothing needs to survive a crash.
            .args(["-c", "fsync=off", "-c", "log_connections=on"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        cgroup.place(&mut server)?;
        let child = server.spawn().context("starting postgres")?;
        let pg = Self {
            child,
            bin,
            root,
            data,
            socket_dir,
            port,
            log,
            cgroup: Some(cgroup),
        };
        pg.wait_ready(Duration::from_secs(30))?;
        pg.superuser_sql(&format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"))?;
        pg.superuser_sql(&format!("CREATE DATABASE {DATABASE} OWNER {USER}"))?;
        Ok(pg)
    }

    fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let out = run_bounded(
                Command::new(self.tool("pg_isready"))
                    .arg("-h")
                    .arg(&self.socket_dir)
                    .args(["-p", &self.port.to_string(), "-q"]),
                Duration::from_secs(10),
            )?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres was not ready within {limit:?}:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A client program of this PostgreSQL version (`psql`, `pg_dump`).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `psql` over the Unix socket as `user` into `database`, stopping at the first error;
    /// its unaligned, tuples-only output.
    fn psql(
        &self,
        user: &str,
        password: &str,
        database: &str,
        sql: &str,
    ) -> anyhow::Result<String> {
        run_ok(
            Command::new(self.tool("psql"))
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
                .arg(&self.socket_dir)
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    user,
                    "-d",
                    database,
                    "-c",
                    sql,
                ])
                .env("PGPASSWORD", password),
            Duration::from_secs(120),
        )
    }

    fn superuser_sql(&self, sql: &str) -> anyhow::Result<String> {
        self.psql(SUPERUSER, SUPERUSER_PASSWORD, "postgres", sql)
    }

    /// SQL as the application's role in its database; the output, trimmed.
    pub fn sql(&self, sql: &str) -> anyhow::Result<String> {
        Ok(self.psql(USER, PASSWORD, DATABASE, sql)?.trim().to_owned())
    }

    /// The `patients` table with `rows` generated rows (one `INSERT … SELECT` over
    /// `generate_series`), then a checkpoint: its pages are in the data files, as on a
    /// server that has been running a while.
    pub fn load_patients(&self, rows: u32) -> anyhow::Result<()> {
        self.sql(&PATIENTS.replace("ROWS", &rows.to_string()))?;
        self.superuser_sql("CHECKPOINT")?;
        Ok(())
    }

    /// The environment a client needs to log in as the application's role.
    pub fn client_env(&self) -> [(&'static str, &'static str); 3] {
        [
            ("PGUSER", USER),
            ("PGPASSWORD", PASSWORD),
            ("PGDATABASE", DATABASE),
        ]
    }

    /// Fast shutdown (SIGINT: backends end, a checkpoint is written) within 20 s, else
    /// SIGKILL for the postmaster and every process left in its cgroup.
    fn stop(&mut self) {
        if let (Ok(None), Ok(pid)) = (self.child.try_wait(), i32::try_from(self.child.id())) {
            // SAFETY: kill(2) on our own child's pid, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let postmaster = self.child.id();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Backends whose postmaster was killed: children of it, by /proc/PID/stat.
        for pid in children_of(postmaster) {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2); a backend of the server this guard started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pids whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        drop(self.cgroup.take());
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!(
                "--- postgres log ({}):\n{log}--- end of postgres log",
                self.log.display()
            );
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

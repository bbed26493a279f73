//! Dovecot (Debian's dovecot-imapd, 2.3) in the foreground with a config of its own: IMAP
//! without TLS on this host's end of the namespace's veth, a passwd-file of test users, their
//! Maildirs under a temporary directory, and its log there, which the tests read as an
//! oracle (`Logged out in=… out=…` per session). Started in `system.slice/dovecot.service`,
//! so the agent names it `dovecot.service` as under systemd; its login and imap processes,
//! forked by the master, are in that cgroup too.

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{NetNs, Proc, ServiceCgroup, maildir::MailUser};

/// The unit the agent should name.
pub const UNIT: &str = "dovecot.service";
/// IMAP's port (RFC 9051): ours alone, on an address of the namespace, which its flock holds.
pub const IMAP_PORT: u16 = 143;

/// A running Dovecot; stopped (SIGTERM to the master, then whatever of its process group is
/// left killed) and its directory removed on drop.
pub struct Dovecot {
    master: Child,
    dir: PathBuf,
    addr: SocketAddr,
    /// Removed after the processes are gone (fields drop after `Drop::drop`).
    _cgroup: ServiceCgroup,
}

/// A login, from `imap-login`'s log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    /// The client's address.
    pub rip: String,
    /// The `imap-login` process that took the connection and authenticated it.
    pub login_pid: u32,
    /// The `imap` process it handed the connection to.
    pub mail_pid: u32,
    pub session: String,
}

/// An IMAP session's end, from the `imap` process's log line: `in=` and `out=` (Dovecot's
/// `imap_logout_format`, `%i` and `%o`) are that process's client stream offsets. `out=` is
/// every byte it wrote to the client, from its `OK … Logged in` on. `in=` is what its command
/// parser consumed, which is what it read less the last command's line end: Dovecot skips a
/// command's CRLF only when the next command comes (`input_skip_line`, src/imap/imap-client.c),
/// and after LOGOUT none does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub pid: u32,
    pub session: String,
    pub reason: String,
    pub input: u64,
    pub output: u64,
}

/// Uid and gid of the `mail` user, whom the mail processes run as (Debian's base-passwd
/// makes it, uid 8).
pub fn mail_owner() -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&"mail") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .context("no user `mail` in /etc/passwd")
}

impl Dovecot {
    /// Dovecot serving IMAP on `ip`:143 to `users`, with everything under `dir` (made
    /// afresh): `dovecot.conf`, `run/` (its `base_dir`), `state/`, `users` (the passwd-file),
    /// `mail/<user>` (Maildirs: fill them with [`crate::maildir::generate`] into
    /// [`Dovecot::mail_root`]) and `dovecot.log`.
    pub fn start(dir: &Path, ip: &str, users: &[MailUser]) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (uid, gid) = mail_owner()?;
        let mail = dir.join("mail");
        std::fs::create_dir(&mail)?;
        std::os::unix::fs::chown(&mail, Some(uid), Some(gid))?;
        let passwd = dir.join("users");
        let entries: String = users
            .iter()
            .map(|u| format!("{}:{{PLAIN}}{}::::::\n", u.name, u.password))
            .collect();
        std::fs::write(&passwd, entries)?;
        let run = dir.join("run");
        // Its sockets live there: a Unix socket path has at most 107 bytes (unix(7)), and
        // the longest name Dovecot puts in base_dir is `replication-notify-fifo`.
        if run.as_os_str().len() > 80 {
            bail!(
                "{} is too long a base_dir for Dovecot's sockets",
                run.display()
            );
        }
        let config = dir.join("dovecot.conf");
        std::fs::write(&config, config_text(dir, ip, uid, gid))?;
        let stderr = std::fs::File::create(dir.join("stderr.log"))?;
        let cgroup = ServiceCgroup::create(UNIT)?;
        let mut cmd = Command::new("dovecot");
        cmd.arg("-F")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own process group: whatever it leaves is found by it on drop.
            .process_group(0);
        cgroup.place(&mut cmd)?;
        let master = cmd
            .spawn()
            .context("starting dovecot (Debian package dovecot-imapd; `cargo xtask setup`)")?;
        let addr = SocketAddr::new(ip.parse()?, IMAP_PORT);
        let mut dovecot = Self {
            master,
            dir: dir.to_owned(),
            addr,
            _cgroup: cgroup,
        };
        dovecot.wait_listening(Duration::from_secs(10))?;
        Ok(dovecot)
    }

    /// Waits until the master listens (read from /proc/net/tcp: a test connection would be
    /// traffic of `dovecot.service` the agent counts).
    fn wait_listening(&mut self, limit: Duration) -> anyhow::Result<()> {
        let SocketAddr::V4(v4) = self.addr else {
            bail!("IPv4 only");
        };
        // The kernel prints the address as the u32 it holds in network order, in host-order
        // hex (net/ipv4/tcp_ipv4.c, get_tcp4_sock); the port in host order.
        let local = format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        );
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.master.try_wait()? {
                bail!(
                    "dovecot exited during start-up with {status}:\n{}{}",
                    std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default(),
                    self.log()
                );
            }
            let tcp = std::fs::read_to_string("/proc/net/tcp")?;
            // `st` 0A is TCP_LISTEN.
            if tcp.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")
            }) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("dovecot does not listen on {} within {limit:?}", self.addr);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mail_location = maildir:<this>/%u`.
    pub fn mail_root(&self) -> PathBuf {
        self.dir.join("mail")
    }

    /// Its whole log (`log_path`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }

    /// Every `imap-login: Info: Login: …` line so far.
    pub fn logins(&self) -> Vec<Login> {
        self.log().lines().filter_map(parse_login).collect()
    }

    /// Every ended IMAP session so far.
    pub fn sessions(&self) -> Vec<Session> {
        self.log().lines().filter_map(parse_session).collect()
    }

    /// The ended session of the `imap` process `pid`, waiting for its line (the log process
    /// writes it a moment after the client has its last reply).
    pub fn session_of(&self, pid: u32, within: Duration) -> anyhow::Result<Session> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.sessions().into_iter().find(|s| s.pid == pid) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!(
                    "no `Logged out` line of imap pid {pid} within {within:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let pid = i32::try_from(self.master.id()).unwrap_or(i32::MAX);
        if let Ok(None) = self.master.try_wait() {
            // SAFETY: kill(2) on our own, unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            // The master stops its children and waits for its log process: a few seconds.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(self.master.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.master.kill();
            let _ = self.master.wait();
        }
        // Children it left: its process group (made for it at spawn), by the group's id.
        let deadline = Instant::now() + Duration::from_secs(5);
        // SAFETY: kill(2) with signal 0 only checks whether the group still exists.
        while unsafe { libc::kill(-pid, 0) } == 0 && Instant::now() < deadline {
            // SAFETY: SIGKILL to the process group of the dovecot we started.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(20));
        }
        if std::thread::panicking() {
            eprintln!(
                "--- dovecot log ({}):\n{}--- end of dovecot log",
                self.dir.display(),
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The whole config: nothing from /etc/dovecot (`-c` names this file alone).
fn config_text(dir: &Path, ip: &str, uid: u32, gid: u32) -> String {
    let dir = dir.display();
    format!(
        r#"# Written by the exfil-sensor scenario tests (tests/src/servers/dovecot.rs).
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
protocols = imap
listen = {ip}
# Plain IMAP: the agent counts what the imap process writes to the client's TCP socket, which
# with TLS the imap-login process would proxy (encrypted) instead.
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/mail/%u
}}
mail_location = maildir:{dir}/mail/%u
# The mail user (`mail`, uid 8) is below Dovecot's default first_valid_uid of 500.
first_valid_uid = {uid}
first_valid_gid = {gid}
# Users the package made (dovecot, dovenull).
default_internal_user = dovecot
default_login_user = dovenull
# The defaults, spelled out because the tests parse them: the imap process's pid in each of
# its lines, and the pids of both processes in the login line.
mail_log_prefix = "%s(%u)<%{{pid}}><%{{session}}>: "
imap_logout_format = in=%i out=%o deleted=%{{deleted}} expunged=%{{expunged}} trashed=%{{trashed}} hdr_count=%{{fetch_hdr_count}} hdr_bytes=%{{fetch_hdr_bytes}} body_count=%{{fetch_body_count}} body_bytes=%{{fetch_body_bytes}}
login_log_format_elements = user=<%u> method=%m rip=%r lip=%l mpid=%e lpid=%{{pid}} %c session=<%{{session}}>
service imap-login {{
  inet_listener imap {{
    port = {IMAP_PORT}
  }}
}}
"#
    )
}

/// `… imap-login: Info: Login: user=<alice>, method=PLAIN, rip=198.51.100.7, lip=…,
/// mpid=123, lpid=120, session=<…>`.
fn parse_login(line: &str) -> Option<Login> {
    let rest = line.split_once(" imap-login: Info: Login: ")?.1;
    let field = |name: &str| -> Option<&str> {
        rest.split(", ")
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
    };
    Some(Login {
        user: field("user")?.trim_matches(['<', '>']).to_owned(),
        rip: field("rip")?.to_owned(),
        login_pid: field("lpid")?.parse().ok()?,
        mail_pid: field("mpid")?.parse().ok()?,
        session: field("session")?.trim_matches(['<', '>']).to_owned(),
    })
}

/// `… imap(alice)<123><session>: Info: Disconnected: Logged out in=49 out=878 …`.
fn parse_session(line: &str) -> Option<Session> {
    let rest = line.split_once(" imap(")?.1;
    let (user, rest) = rest.split_once(")<")?;
    let (pid, rest) = rest.split_once("><")?;
    let (session, rest) = rest.split_once(">: Info: ")?;
    let (reason, stats) = rest.split_once(" in=")?;
    let mut stats = stats.split(' ');
    let input = stats.next()?.parse().ok()?;
    let output = stats.next()?.strip_prefix("out=")?.parse().ok()?;
    Some(Session {
        user: user.to_owned(),
        pid: pid.parse().ok()?,
        session: session.to_owned(),
        reason: reason.to_owned(),
        input,
        output,
    })
}

/// What the IMAP thief counted at its end of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// Every byte read off the socket: the greeting on.
    pub received: u64,
    /// What it had received when it sent LOGIN: the greeting and capabilities, which the
    /// login process sends.
    pub before_login: u64,
    pub sent: u64,
    /// What it had sent once its LOGIN was out: what the login process read.
    pub sent_to_login: u64,
    pub folders: u64,
    pub messages: u64,
    /// The messages themselves (the literals of the `BODY[]` responses).
    pub octets: u64,
}

/// Scenario 1's intruder: from `source` (a host of `ns`), logs in to `server` as `user` with
/// Python's imaplib and FETCHes every message of every folder; returns when it has logged
/// out, with what it counted. Debian's python3 (the `python3` package).
pub fn steal_mailbox(
    ns: &NetNs,
    server: SocketAddr,
    source: &str,
    user: &MailUser,
) -> anyhow::Result<Fetched> {
    fetch_everything(ns, server, source, user, None)
}

/// An office client's sync (issue 11's normal day): a mail client at `source` (a host of
/// `ns`) setting up an account, so FETCHing every message of every folder, the same way as
/// the thief; its process in `place` (the cgroup of the namespace's hosts).
pub fn sync_mailbox(
    ns: &NetNs,
    server: SocketAddr,
    source: &str,
    user: &MailUser,
    place: &ServiceCgroup,
) -> anyhow::Result<Fetched> {
    fetch_everything(ns, server, source, user, Some(place))
}

fn fetch_everything(
    ns: &NetNs,
    server: SocketAddr,
    source: &str,
    user: &MailUser,
    place: Option<&ServiceCgroup>,
) -> anyhow::Result<Fetched> {
    let mut cmd = ns.command(Path::new("/usr/bin/python3"));
    if let Some(cgroup) = place {
        cgroup.place(&mut cmd)?;
    }
    cmd.arg("-I")
        .arg("-c")
        .arg(include_str!("imap_fetch.py"))
        .arg(server.ip().to_string())
        .arg(server.port().to_string())
        .arg(user.name)
        .arg(user.password)
        .arg(source);
    let mut thief = Proc::spawn(cmd, "the IMAP thief (python3 imaplib)")?;
    let fetched = Fetched {
        received: thief.expect_line("received")?,
        before_login: thief.expect_line("before_login")?,
        sent: thief.expect_line("sent")?,
        sent_to_login: thief.expect_line("sent_to_login")?,
        folders: thief.expect_line("folders")?,
        messages: thief.expect_line("messages")?,
        octets: thief.expect_line("octets")?,
    };
    thief.finish()?;
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_of_dovecot_2_3_parse() {
        // As Dovecot 2.3.19 wrote them with the config above.
        let login = "Nov 24 04:01:54 imap-login: Info: Login: user=<alice>, method=PLAIN, \
                     rip=127.0.0.1, lip=127.0.0.1, mpid=29922, lpid=29918, secured, \
                     session=<kUBYxf1ge59/AAAB>";
        assert_eq!(
            parse_login(login),
            Some(Login {
                user: "alice".into(),
                rip: "127.0.0.1".into(),
                login_pid: 29918,
                mail_pid: 29922,
                session: "kUBYxf1ge59/AAAB".into(),
            })
        );
        let logout = "Nov 24 04:01:54 imap(alice)<29922><kUBYxf1ge59/AAAB>: Info: \
                      Disconnected: Logged out in=49 out=870 deleted=0 expunged=0 trashed=0 \
                      hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0";
        assert_eq!(
            parse_session(logout),
            Some(Session {
                user: "alice".into(),
                pid: 29922,
                session: "kUBYxf1ge59/AAAB".into(),
                reason: "Disconnected: Logged out".into(),
                input: 49,
                output: 870,
            })
        );
    }
}

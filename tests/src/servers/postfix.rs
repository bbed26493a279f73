//! Postfix (Debian's package, 3.7) in the foreground (`postfix -c DIR start-fg`) with a
//! config of its own: `main.cf`, `master.cf`, the queue, its data directory and its log
//! (`maillog_file`, written by `postlogd`) under a temporary directory, nothing from
//! /etc/postfix but the package's `postfix-files`. It receives mail on this host's end of the
//! namespace's veth, port 25, delivers mail for `example.org` with its `virtual` agent into
//! the Maildirs Dovecot serves (as the `mail` user), and relays everything else to a relay
//! host. No DNS, no chroot, IPv4 only. Started in `system.slice/postfix.service`, so the
//! agent names its processes (`smtpd`, `cleanup`, `qmgr`, `smtp`, `virtual`, …) as under
//! systemd, and the shipped `postfix` profile (`postfix*.service`) matches them.

use std::{
    io::Write as _,
    net::{SocketAddr, SocketAddrV4},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    ServiceCgroup,
    postgres::{run_bounded, wait_within},
    servers::listening,
};

/// The unit the agent should name.
pub const UNIT: &str = "postfix.service";
/// SMTP's port (RFC 5321): ours alone, on an address of the namespace, which its flock holds.
pub const SMTP_PORT: u16 = 25;
/// The mail domain it is the destination of.
pub const DOMAIN: &str = "example.org";

/// A running Postfix; stopped (`postfix stop`, then whatever is left in its cgroup killed)
/// and its directory removed on drop.
pub struct Postfix {
    /// `postfix start-fg`: the package's script, waiting for the master.
    script: Child,
    dir: PathBuf,
    addr: SocketAddr,
    cgroup: Option<ServiceCgroup>,
}

/// One delivery attempt, from a delivery agent's log line: `postfix/virtual[123]: 4F1C…:
/// to=<alice@example.org>, relay=virtual, … status=sent (delivered to maildir)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// `virtual` or `smtp`.
    pub agent: String,
    pub pid: u32,
    pub queue_id: String,
    pub to: String,
    /// `virtual`, or the relay host as `name[ip]:port`.
    pub relay: String,
    /// `sent`, `deferred`, `bounced`.
    pub status: String,
}

impl Postfix {
    /// Postfix listening on `ip`:25, with everything under `dir` (made afresh): `etc/`
    /// (`main.cf`, `master.cf`), `queue/`, `data/` and `maillog`. Mail for `users` at
    /// [`DOMAIN`] goes to `mail_root/<user>/` (Maildir, owned by `owner`); everything else to
    /// `relayhost`, an `ip:port` (no MX lookup).
    pub fn start(
        dir: &Path,
        ip: &str,
        mail_root: &Path,
        owner: (u32, u32),
        users: &[&str],
        relayhost: SocketAddrV4,
    ) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let etc = dir.join("etc");
        std::fs::create_dir(&etc)?;
        // The queue's own directories are made by `postfix start` (post-install
        // create-missing, from /etc/postfix/postfix-files), owned by `postfix`.
        std::fs::create_dir(dir.join("queue"))?;
        let data = dir.join("data");
        std::fs::create_dir(&data)?;
        let (postfix_uid, postfix_gid) = user_ids("postfix")?;
        std::os::unix::fs::chown(&data, Some(postfix_uid), Some(postfix_gid))?;
        std::fs::write(
            etc.join("main.cf"),
            main_cf(dir, ip, mail_root, owner, users, relayhost),
        )?;
        std::fs::write(etc.join("master.cf"), MASTER_CF)?;
        let output = std::fs::File::create(dir.join("start-fg.log"))?;
        let cgroup = ServiceCgroup::create(UNIT)?;
        let mut cmd = Command::new("postfix");
        cmd.arg("-c")
            .arg(&etc)
            .arg("start-fg")
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .process_group(0);
        cgroup.place(&mut cmd)?;
        let script = cmd
            .spawn()
            .context("starting postfix (Debian package postfix; `cargo xtask setup`)")?;
        let addr = SocketAddr::new(ip.parse()?, SMTP_PORT);
        let mut postfix = Self {
            script,
            dir: dir.to_owned(),
            addr,
            cgroup: Some(cgroup),
        };
        postfix.wait_listening(Duration::from_secs(30))?;
        Ok(postfix)
    }

    fn wait_listening(&mut self, limit: Duration) -> anyhow::Result<()> {
        let SocketAddr::V4(v4) = self.addr else {
            bail!("IPv4 only");
        };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.script.try_wait()? {
                bail!(
                    "postfix start-fg exited during start-up with {status}:\n{}{}",
                    std::fs::read_to_string(self.dir.join("start-fg.log")).unwrap_or_default(),
                    self.log()
                );
            }
            if listening(None, v4)? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "postfix does not listen on {} within {limit:?}:\n{}",
                    self.addr,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `config_directory`: what `postfix -c` and `sendmail -C` take.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("etc")
    }

    /// Its whole log (`maillog_file`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Every delivery attempt logged so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.log().lines().filter_map(parse_delivery).collect()
    }

    /// A message submitted locally, as a web application or a cron job does: Postfix's
    /// `sendmail` (through `postdrop` into the queue's `maildrop`, which `pickup` takes), from
    /// `sender` to `recipients`; in `place` when given (the submitting application's service).
    pub fn sendmail(
        &self,
        sender: &str,
        recipients: &[&str],
        message: &[u8],
        place: Option<&ServiceCgroup>,
    ) -> anyhow::Result<()> {
        let mut cmd = Command::new("/usr/sbin/sendmail");
        cmd.arg("-C")
            .arg(self.config_dir())
            .arg("-f")
            .arg(sender)
            .arg("--")
            .args(recipients)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(cgroup) = place {
            cgroup.place(&mut cmd)?;
        }
        let mut child = cmd.spawn().context("starting postfix's sendmail")?;
        let mut stdin = child.stdin.take().context("sendmail's stdin")?;
        stdin.write_all(message)?;
        drop(stdin);
        let status = wait_within(&mut child, Duration::from_secs(30), "sendmail")?;
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("sendmail exited with {status}: {err}");
        }
        Ok(())
    }

    /// Waits until `sent` delivery attempts ended `status=sent`; fails at once on a bounce
    /// or deferral (nothing here should be either), or after `within`.
    pub fn wait_delivered(&self, sent: usize, within: Duration) -> anyhow::Result<Vec<Delivery>> {
        let deadline = Instant::now() + within;
        loop {
            let deliveries = self.deliveries();
            if let Some(failed) = deliveries.iter().find(|d| d.status != "sent") {
                bail!("a delivery failed: {failed:?}\n{}", self.log());
            }
            if deliveries.len() >= sent {
                return Ok(deliveries);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {sent} deliveries within {within:?}:\n{}",
                    deliveries.len(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // The master stops its children and exits; the script waiting for it then ends.
        let _ = run_bounded(
            Command::new("postfix")
                .arg("-c")
                .arg(self.config_dir())
                .arg("stop"),
            Duration::from_secs(20),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.script.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.script.kill();
        let _ = self.script.wait();
        // Whatever is left in its cgroup (a delivery agent the master did not wait for).
        if let Some(cgroup) = &self.cgroup {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let pids = cgroup.pids();
                if pids.is_empty() || Instant::now() > deadline {
                    break;
                }
                for pid in pids {
                    if let Ok(pid) = i32::try_from(pid) {
                        // SAFETY: kill(2) on a process of the cgroup this guard made for
                        // the Postfix it started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        drop(self.cgroup.take());
        if std::thread::panicking() {
            eprintln!(
                "--- postfix log ({}):\n{}--- end of postfix log",
                self.dir.display(),
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Uid and gid of a system user, from /etc/passwd.
fn user_ids(name: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&name) && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .with_context(|| format!("no user `{name}` in /etc/passwd"))
}

/// The whole `main.cf`: what is not here is Postfix's default (`postconf -d`), never
/// /etc/postfix's.
fn main_cf(
    dir: &Path,
    ip: &str,
    mail_root: &Path,
    (uid, gid): (u32, u32),
    users: &[&str],
    relayhost: SocketAddrV4,
) -> String {
    let dir = dir.display();
    let mailboxes: String = users
        .iter()
        .map(|u| format!(" {{{u}@{DOMAIN}={u}/}}"))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        r"# Written by the exfil-sensor scenario tests (tests/src/servers/postfix.rs).
compatibility_level = 3.6
config_directory = {dir}/etc
queue_directory = {dir}/queue
data_directory = {dir}/data
# No syslog here: postlogd writes the log (Postfix 3.4 and later), under a prefix allowed.
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
myhostname = mail.{DOMAIN}
mydomain = {DOMAIN}
myorigin = {DOMAIN}
inet_interfaces = {ip}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# Nothing is delivered by `local`: every mailbox of the domain is a virtual one.
mydestination =
alias_maps =
alias_database =
biff = no
# Mail for the domain, into the Maildirs Dovecot serves (the trailing / says Maildir), as
# the mail user (uid 8, below the default virtual_minimum_uid of 100).
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_base = {mail_root}
virtual_mailbox_maps = inline:{{{mailboxes} }}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = {uid}
# The rest goes to the smarthost, by address: no DNS anywhere (the namespace has none).
relayhost = [{relay_ip}]:{relay_port}
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
",
        mail_root = mail_root.display(),
        relay_ip = relayhost.ip(),
        relay_port = relayhost.port(),
    )
}

/// Debian's `master.cf` services that this set-up uses, none chrooted (the queue is not
/// where a chroot would need it), and `postlog` for `maillog_file`.
const MASTER_CF: &str = "\
# service type  private unpriv  chroot  wakeup  maxproc command + args
smtp      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// `Nov 24 04:33:44 mail postfix/virtual[21809]: D11FA9D660B: to=<alice@example.org>,
/// relay=virtual, delay=0.03, …, dsn=2.0.0, status=sent (delivered to maildir)`.
fn parse_delivery(line: &str) -> Option<Delivery> {
    let rest = line.split_once(" postfix/")?.1;
    let (agent, rest) = rest.split_once('[')?;
    if agent != "virtual" && agent != "smtp" {
        return None;
    }
    let (pid, rest) = rest.split_once("]: ")?;
    let (queue_id, rest) = rest.split_once(": to=<")?;
    let (to, rest) = rest.split_once(">, ")?;
    let field = |name: &str| -> Option<&str> {
        rest.split(", ")
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
    };
    Some(Delivery {
        agent: agent.to_owned(),
        pid: pid.parse().ok()?,
        queue_id: queue_id.to_owned(),
        to: to.to_owned(),
        relay: field("relay")?.to_owned(),
        status: field("status")?.split(' ').next()?.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_lines_of_postfix_3_7_parse() {
        // As Postfix 3.7.11 wrote them with the config above.
        let virtual_ = "Nov 24 04:33:44 mail postfix/virtual[21809]: D11FA9D660B: \
                        to=<alice@example.org>, relay=virtual, delay=0.03, \
                        delays=0.01/0.01/0/0.01, dsn=2.0.0, status=sent (delivered to maildir)";
        assert_eq!(
            parse_delivery(virtual_),
            Some(Delivery {
                agent: "virtual".into(),
                pid: 21809,
                queue_id: "D11FA9D660B".into(),
                to: "alice@example.org".into(),
                relay: "virtual".into(),
                status: "sent".into(),
            })
        );
        let deferred = "Nov 24 04:33:45 mail postfix/smtp[21816]: E5E6D9D6418: \
                        to=<bob@partner.example>, relay=none, delay=0.06, \
                        delays=0.03/0.03/0/0, dsn=4.4.1, status=deferred (connect to \
                        127.0.0.1[127.0.0.1]:2525: Connection refused)";
        assert_eq!(
            parse_delivery(deferred).map(|d| (d.agent, d.relay, d.status)),
            Some(("smtp".into(), "none".into(), "deferred".into()))
        );
        let other = "Nov 24 04:33:44 mail postfix/qmgr[21239]: D11FA9D660B: \
                     from=<x@example.com>, size=405, nrcpt=1 (queue active)";
        assert_eq!(parse_delivery(other), None);
    }
}

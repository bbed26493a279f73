//! Mailboxes made by the tests: Maildir++ folders of RFC 5322 messages, generated from a
//! seeded PRNG (the same bytes on every run, no network), written straight into `cur/` under
//! the names a delivery agent gives them, so that Dovecot serves them as delivered mail.
//!
//! Each user's mailbox is exactly the size asked for, so a test knows the store's total and
//! each user's share without reading it back.

use std::{
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// A mail user: login, password (Dovecot's passwd-file, in the clear) and how many bytes of
/// mail (file sizes) the generator gives them.
#[derive(Debug, Clone, Copy)]
pub struct MailUser {
    pub name: &'static str,
    pub password: &'static str,
    pub bytes: u64,
}

/// The scenarios' mail store: four users, 150 MiB in all (the intruder of scenario 1 has
/// alice's password; the office clients of the normal day are alice, bob and carol).
pub const SCENARIO_USERS: [MailUser; 4] = [
    MailUser {
        name: "alice",
        password: "Summer2025!",
        bytes: 64 << 20,
    },
    MailUser {
        name: "bob",
        password: "hunter22",
        bytes: 40 << 20,
    },
    MailUser {
        name: "carol",
        password: "c4r0l-pw",
        bytes: 26 << 20,
    },
    MailUser {
        name: "dave",
        password: "dave1984",
        bytes: 20 << 20,
    },
];

/// The folders of each mailbox and their shares of its bytes, in per cent. INBOX is the
/// Maildir's root; the others are Maildir++ `.Name` subdirectories.
pub const FOLDERS: [(&str, u64); 4] = [("INBOX", 50), ("Sent", 20), ("Archive", 25), ("Trash", 5)];

/// One generated folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    pub user: String,
    pub name: String,
    pub messages: u64,
    /// The files' sizes: what the user's `bytes` adds up to.
    pub bytes: u64,
    /// What IMAP serves (RFC822.SIZE, and the octets of `BODY[]`): the messages with CRLF
    /// line ends, as Dovecot converts Maildir's LF files (RFC 3501 §2.3.4).
    pub imap_bytes: u64,
}

/// What was generated.
#[derive(Debug, Clone)]
pub struct MailStore {
    pub root: PathBuf,
    pub folders: Vec<Folder>,
}

impl MailStore {
    /// Messages, file bytes and IMAP bytes of one user's folders together.
    pub fn user_totals(&self, user: &str) -> (u64, u64, u64) {
        self.folders
            .iter()
            .filter(|f| f.user == user)
            .fold((0, 0, 0), |(m, b, i), f| {
                (m + f.messages, b + f.bytes, i + f.imap_bytes)
            })
    }

    pub fn messages(&self) -> u64 {
        self.folders.iter().map(|f| f.messages).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.folders.iter().map(|f| f.bytes).sum()
    }
}

/// Writes each user's Maildir under `root/<user>` (Dovecot's `maildir:root/%u`), owned by
/// `owner` (uid, gid): the mail user Dovecot's `imap` runs as must write its index files
/// there. Deterministic for a `seed`.
pub fn generate(
    root: &Path,
    users: &[MailUser],
    owner: (u32, u32),
    seed: u64,
) -> anyhow::Result<MailStore> {
    let mut rng = Rng(seed);
    let pools = Pools::new(&mut rng);
    let mut store = MailStore {
        root: root.to_owned(),
        folders: Vec::new(),
    };
    make_dir(root, owner)?;
    for user in users {
        let home = root.join(user.name);
        let mut left = user.bytes;
        for (i, (folder, share)) in FOLDERS.iter().enumerate() {
            // The last folder takes what rounding left, so the user's total is exact.
            let budget = if i + 1 == FOLDERS.len() {
                left
            } else {
                user.bytes * share / 100
            };
            left -= budget;
            let dir = if *folder == "INBOX" {
                home.clone()
            } else {
                home.join(format!(".{folder}"))
            };
            make_dir(&home, owner)?;
            make_dir(&dir, owner)?;
            for sub in ["cur", "new", "tmp"] {
                make_dir(&dir.join(sub), owner)?;
            }
            if *folder != "INBOX" {
                // Maildir++ marks its subfolders so (Dovecot makes it for folders it creates).
                write_owned(&dir.join("maildirfolder"), b"", owner)?;
            }
            let mut made = Folder {
                user: user.name.to_owned(),
                name: (*folder).to_owned(),
                messages: 0,
                bytes: 0,
                imap_bytes: 0,
            };
            let mut writer = MessageWriter {
                rng: &mut rng,
                pools: &pools,
                to: user.name,
            };
            while made.bytes < budget {
                let left = budget - made.bytes;
                let size = writer.next_size(left);
                let seq = store.messages() + made.messages;
                let (message, date, lines) = writer.message(size, seq);
                debug_assert_eq!(message.len() as u64, size);
                // Each LF becomes CRLF.
                let vsize = size + lines;
                // The name Dovecot's own delivery gives: time, unique part, host, then the
                // sizes it would otherwise stat and read the file for (S= file size, W=
                // size with CRLF), and the flags after `:2,` (most mail is read).
                let flags = if seq.is_multiple_of(7) { "" } else { "S" };
                let name = format!("{date}.M{seq}P4242.mail,S={size},W={vsize}:2,{flags}");
                write_owned(&dir.join("cur").join(name), &message, owner)?;
                made.messages += 1;
                made.bytes += size;
                made.imap_bytes += vsize;
            }
            store.folders.push(made);
        }
    }
    Ok(store)
}

/// `count` messages as they arrive from outside, the `i`th to `recipients[i % len]` (its
/// local part): the mix of sizes of the generated mailboxes (text of 1 to 13 KiB, one in
/// sixteen with an attachment of up to about 2 MiB), with LF line ends. Deterministic for a
/// seed.
pub fn messages(recipients: &[&str], count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    let pools = Pools::new(&mut rng);
    (0..count as u64)
        .map(|seq| {
            let to = recipients[seq as usize % recipients.len()];
            let mut writer = MessageWriter {
                rng: &mut rng,
                pools: &pools,
                to,
            };
            let size = writer.next_size(u64::MAX);
            writer.message(size, seq).0
        })
        .collect()
}

fn make_dir(dir: &Path, (uid, gid): (u32, u32)) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", dir.display()))?;
    }
    Ok(())
}

fn write_owned(path: &Path, data: &[u8], (uid, gid): (u32, u32)) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}

/// SplitMix64 (Steele, Lea and Flood 2014): small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Text and base64 made once and sliced for every message: the store is written at memory
/// speed rather than one PRNG call per byte.
struct Pools {
    /// The vocabulary of prose and subjects: common English words and office ones.
    words: Vec<&'static str>,
    /// Prose wrapped at 72 columns, whole lines.
    text: Vec<u8>,
    /// Where each of its lines starts.
    text_lines: Vec<usize>,
    /// Line ends in `text[..i]`, for every i: a copy's lines are counted, never scanned.
    text_newlines: Vec<u32>,
    /// Base64 of random bytes in full 76-character lines (RFC 2045 §6.8).
    base64: Vec<u8>,
}

const BASE64_LINE: usize = 77;
/// Random bytes behind the base64 pool: 16,384 lines of 57 bytes (1.2 MiB encoded).
const BASE64_RAW: usize = 57 * 16 * 1024;

impl Pools {
    fn new(rng: &mut Rng) -> Self {
        let words: Vec<&str> = include_str!("maildir/words.txt")
            .split_whitespace()
            .collect();
        let mut text = Vec::with_capacity(80 << 10);
        let mut line = String::new();
        while text.len() < 64 << 10 {
            let word = rng.pick(&words);
            if line.len() + 1 + word.len() > 72 {
                text.extend_from_slice(line.as_bytes());
                text.push(b'\n');
                if rng.below(6) == 0 {
                    text.push(b'\n');
                }
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        text.extend_from_slice(line.as_bytes());
        text.push(b'\n');
        let raw: Vec<u8> = (0..BASE64_RAW / 8)
            .flat_map(|_| rng.next().to_le_bytes())
            .collect();
        let mut base64 = Vec::with_capacity(raw.len() / 57 * BASE64_LINE);
        for chunk in raw.chunks(57) {
            encode_base64(chunk, &mut base64);
            base64.push(b'\n');
        }
        let mut text_lines = vec![0];
        let mut text_newlines = vec![0];
        for (i, &b) in text.iter().enumerate() {
            let before = text_newlines[i];
            text_newlines.push(before + u32::from(b == b'\n'));
            if b == b'\n' && i + 1 < text.len() {
                text_lines.push(i + 1);
            }
        }
        Self {
            words,
            text,
            text_lines,
            text_newlines,
            base64,
        }
    }

    /// Exactly `n` bytes of prose from a line picked by `start` on (cyclic), ending in a line
    /// end; returns how many line ends it wrote.
    fn prose(&self, start: u64, n: usize, out: &mut Vec<u8>) -> u64 {
        if n == 0 {
            return 0;
        }
        let mut at = self.text_lines[start as usize % self.text_lines.len()];
        let mut left = n - 1;
        let mut lines = 1;
        while left > 0 {
            let take = left.min(self.text.len() - at);
            out.extend_from_slice(&self.text[at..at + take]);
            lines += u64::from(self.text_newlines[at + take] - self.text_newlines[at]);
            left -= take;
            at = 0;
        }
        out.push(b'\n');
        lines
    }

    /// `lines` whole lines of base64 from line `start` on (cyclic).
    fn base64_lines(&self, start: u64, lines: usize, out: &mut Vec<u8>) {
        let count = self.base64.len() / BASE64_LINE;
        let mut at = (start as usize % count) * BASE64_LINE;
        let mut left = lines * BASE64_LINE;
        while left > 0 {
            let take = left.min(self.base64.len() - at);
            out.extend_from_slice(&self.base64[at..at + take]);
            left -= take;
            at = 0;
        }
    }
}

/// Line ends in a (short) header text.
fn newlines(text: &str) -> u64 {
    text.bytes().filter(|&b| b == b'\n').count() as u64
}

fn encode_base64(bytes: &[u8], out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if i <= chunk.len() {
                ALPHABET[((n >> shift) & 63) as usize]
            } else {
                b'='
            });
        }
    }
}

struct MessageWriter<'a> {
    rng: &'a mut Rng,
    pools: &'a Pools,
    to: &'a str,
}

/// A folder's last message takes what is left when it is at most this.
const LAST: u64 = 32 << 10;
/// ... and every other message leaves at least this for it: more than any header block.
const SPARE: u64 = 4 << 10;
/// Text messages are 1 KiB to 13 KiB; one in sixteen carries an attachment, 24 KiB to about
/// 2 MiB (squared uniform: few are large). About 3,000 messages in 150 MiB.
const ATTACHMENT_ONE_IN: u64 = 16;

impl MessageWriter<'_> {
    fn next_size(&mut self, left: u64) -> u64 {
        if left <= LAST {
            return left;
        }
        let size = if self.rng.below(ATTACHMENT_ONE_IN) == 0 {
            let u = self.rng.below(1 << 16);
            (24 << 10) + ((u * u) >> 11)
        } else {
            1024 + self.rng.below(12 << 10)
        };
        size.min(left - SPARE)
    }

    /// One message of exactly `size` bytes, its date (Unix seconds) and its line count.
    fn message(&mut self, size: u64, seq: u64) -> (Vec<u8>, u64, u64) {
        let size = usize::try_from(size).expect("message size fits usize");
        // 2025-06-01 00:00 UTC, then back over a year: messages of the last twelve months.
        let date = 1_748_736_000 - self.rng.below(365 * 86_400);
        let from = format!(
            "{} {} <{}@{}>",
            self.rng.pick(FIRST_NAMES),
            self.rng.pick(LAST_NAMES),
            self.rng.pick(LOCAL_PARTS),
            self.rng.pick(DOMAINS)
        );
        let subject = format!(
            "{} {} {}",
            self.rng.pick(SUBJECT_HEADS),
            self.rng.pick(&self.pools.words),
            self.rng.pick(&self.pools.words)
        );
        let mut m = Vec::with_capacity(size);
        let head = format!(
            "Return-Path: <bounces@{domain}>\n\
             Received: from mx.{domain} (mx.{domain} [203.0.113.{host}])\n\
             \tby mail.example.org (Postfix) with ESMTPS id {id:X}\n\
             \tfor <{to}@example.org>; {date_text}\n\
             Date: {date_text}\n\
             From: {from}\n\
             To: {to}@example.org\n\
             Subject: {subject}\n\
             Message-ID: <{seq}.{id:x}@{domain}>\n\
             MIME-Version: 1.0\n",
            domain = self.rng.pick(DOMAINS),
            host = 1 + self.rng.below(250),
            id = self.rng.next() >> 24,
            to = self.to,
            date_text = rfc5322_date(date),
        );
        m.extend_from_slice(head.as_bytes());
        let mut lines = newlines(&head);
        if size > 20 << 10 {
            lines += self.attachment_body(&mut m, size, seq);
        } else {
            let content = "Content-Type: text/plain; charset=us-ascii\n\
                           Content-Transfer-Encoding: 7bit\n\n";
            m.extend_from_slice(content.as_bytes());
            lines += newlines(content);
            let n = size.saturating_sub(m.len());
            lines += self.pools.prose(self.rng.next(), n, &mut m);
        }
        (m, date, lines)
    }

    /// A multipart/mixed body: a short note, then a base64 attachment, the note sized so
    /// that the message is exactly `size` bytes. Returns its line count.
    fn attachment_body(&mut self, m: &mut Vec<u8>, size: usize, seq: u64) -> u64 {
        let (kind, ext) = [
            ("application/pdf", "pdf"),
            (
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "xlsx",
            ),
            ("image/jpeg", "jpg"),
            ("application/zip", "zip"),
        ][self.rng.below(4) as usize];
        let file = format!("{}-{seq}.{ext}", self.rng.pick(&self.pools.words));
        let boundary = format!("=_part_{seq}_{:x}", self.rng.next() >> 40);
        let top = format!(
            "Content-Type: multipart/mixed; boundary=\"{boundary}\"\n\n\
             This is a multi-part message in MIME format.\n\n\
             --{boundary}\nContent-Type: text/plain; charset=us-ascii\n\
             Content-Transfer-Encoding: 7bit\n\n"
        );
        let middle = format!(
            "\n--{boundary}\nContent-Type: {kind}; name=\"{file}\"\n\
             Content-Transfer-Encoding: base64\n\
             Content-Disposition: attachment; filename=\"{file}\"\n\n"
        );
        let end = format!("--{boundary}--\n");
        let fixed = m.len() + top.len() + middle.len() + end.len();
        // The note gets 300 bytes and whatever whole base64 lines leave.
        let lines = (size - fixed - 300) / BASE64_LINE;
        let note = size - fixed - lines * BASE64_LINE;
        m.extend_from_slice(top.as_bytes());
        let note_lines = self.pools.prose(self.rng.next(), note, m);
        m.extend_from_slice(middle.as_bytes());
        self.pools.base64_lines(self.rng.next(), lines, m);
        m.extend_from_slice(end.as_bytes());
        newlines(&top) + note_lines + newlines(&middle) + lines as u64 + newlines(&end)
    }
}

/// `Mon, 05 Jan 2026 08:00:00 +0000` (RFC 5322 §3.3), from Unix seconds.
fn rfc5322_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let (y, m, d) = civil_from_days(days);
    let t = secs % 86_400;
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

const FIRST_NAMES: &[&str] = &[
    "Alice", "Bruno", "Chiara", "Deepak", "Elena", "Farid", "Grace", "Hiro", "Ingrid", "Jonas",
    "Kemi", "Lars", "Maya", "Nikos", "Olga", "Pedro",
];
const LAST_NAMES: &[&str] = &[
    "Martin",
    "Okafor",
    "Rossi",
    "Nakamura",
    "Silva",
    "Novak",
    "Jensen",
    "Haddad",
    "Kowalski",
    "Dubois",
    "Lindqvist",
    "Moreau",
];
const LOCAL_PARTS: &[&str] = &[
    "info", "billing", "j.smith", "support", "hr", "ceo", "noreply", "accounts", "sales", "legal",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "example.net",
    "partner.example",
    "supplier.example",
    "bank.example",
    "clinic.example",
];
const SUBJECT_HEADS: &[&str] = &[
    "Re:",
    "Fwd:",
    "Invoice",
    "Minutes:",
    "Contract",
    "Quarterly",
    "Urgent:",
    "Draft",
    "Payroll",
    "Meeting",
];

#[cfg(test)]
mod tests;

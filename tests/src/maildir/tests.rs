//! The generated mail store: sizes exact, messages well-formed, runs reproducible.
use super::*;

#[test]
fn dates_are_rfc5322() {
    assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
    assert_eq!(
        rfc5322_date(1_748_736_000),
        "Sun, 01 Jun 2025 00:00:00 +0000"
    );
    assert_eq!(rfc5322_date(951_825_600), "Tue, 29 Feb 2000 12:00:00 +0000");
}

/// Every file is as its name says (S= its size, W= its size with CRLF), each user's
/// files add up to what was asked, and a second run writes the same bytes.
#[test]
fn maildirs_are_exact_and_the_same_on_every_run() {
    const USERS: [MailUser; 2] = [
        MailUser {
            name: "ann",
            password: "a",
            bytes: 3 << 20,
        },
        MailUser {
            name: "ben",
            password: "b",
            bytes: 1_000_003,
        },
    ];
    // SAFETY: getuid/getgid have no preconditions.
    let owner = unsafe { (libc::getuid(), libc::getgid()) };
    let base = std::env::temp_dir().join(format!("maildir-unit-{}", std::process::id()));
    let mut contents = Vec::new();
    for run in 0..2 {
        let root = base.join(run.to_string());
        std::fs::create_dir_all(&base).expect("mkdir");
        let store = generate(&root, &USERS, owner, 7).expect("generate");
        let mut files = Vec::new();
        for folder in &store.folders {
            let mut dir = root.join(&folder.user);
            if folder.name != "INBOX" {
                dir = dir.join(format!(".{}", folder.name));
            }
            let (mut bytes, mut imap_bytes, mut messages) = (0, 0, 0);
            let mut names: Vec<_> = std::fs::read_dir(dir.join("cur"))
                .expect("cur")
                .map(|e| e.expect("entry").path())
                .collect();
            names.sort();
            for path in names {
                let data = std::fs::read(&path).expect("read");
                let name = path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                let field = |key: &str| -> u64 {
                    name.split([',', ':'])
                        .find_map(|f| f.strip_prefix(key))
                        .expect("a size in the name")
                        .parse()
                        .expect("a number")
                };
                let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
                assert_eq!(field("S="), data.len() as u64, "{name}");
                assert_eq!(field("W="), data.len() as u64 + lines, "{name}");
                assert!(data.starts_with(b"Return-Path: <"), "{name}");
                assert!(data.windows(2).any(|w| w == b"\n\n"), "{name}: no body");
                assert_eq!(data.last(), Some(&b'\n'), "{name}");
                bytes += data.len() as u64;
                imap_bytes += field("W=");
                messages += 1;
                files.push((name, data));
            }
            assert_eq!(
                (messages, bytes, imap_bytes),
                (folder.messages, folder.bytes, folder.imap_bytes),
                "{folder:?}"
            );
        }
        for user in &USERS {
            assert_eq!(store.user_totals(user.name).1, user.bytes);
        }
        contents.push(files);
    }
    assert!(contents[0] == contents[1], "two runs differ");
    std::fs::remove_dir_all(&base).expect("cleanup");
}

#[test]
fn base64_is_rfc4648() {
    for (raw, encoded) in [
        (&b""[..], ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg=="),
        (b"fooba", "Zm9vYmE="),
        (b"foobar", "Zm9vYmFy"),
    ] {
        let mut out = Vec::new();
        encode_base64(raw, &mut out);
        assert_eq!(String::from_utf8(out).expect("ASCII"), encoded);
    }
}

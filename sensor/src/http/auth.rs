//! Basic auth against the web config's `basic_auth_users` (bcrypt hashes), as
//! exporter-toolkit does it: user names compared in constant time, an unknown user costs a
//! bcrypt check too (so timing does not tell which users exist), and a verified
//! (user, hash, password) is remembered, so that a scrape every 15 s costs one bcrypt
//! (~70 ms at cost 10) per password, not one per scrape.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use subtle::{ConditionallySelectable as _, ConstantTimeEq as _};
use tokio::sync::Semaphore;

use super::web_config::User;

/// How many verified logins are remembered (exporter-toolkit's `cacheSize`).
const REMEMBERED: usize = 100;

/// What an unknown user's password is checked against, so that it costs what a known one
/// does: made once, at cost 10 (htpasswd's examples' cost), with a random salt.
static DECOY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn decoy_hash() -> &'static str {
    DECOY_HASH.get_or_init(|| bcrypt::hash("decoy", 10).unwrap_or_default())
}

/// The verifier shared by a listener's connections.
pub struct BasicAuth {
    /// SHA-256 of each remembered (user, hash, password), oldest first; never the password.
    verified: Arc<Mutex<Remembered>>,
    /// One bcrypt at a time (exporter-toolkit's `bcryptMtx`): a flood of wrong passwords
    /// queues here, off the runtime's threads, instead of taking every core.
    bcrypt: Arc<Semaphore>,
}

#[derive(Default)]
struct Remembered {
    order: VecDeque<[u8; 32]>,
    set: HashSet<[u8; 32]>,
}

impl Default for BasicAuth {
    fn default() -> Self {
        Self {
            verified: Arc::new(Mutex::new(Remembered::default())),
            bcrypt: Arc::new(Semaphore::new(1)),
        }
    }
}

impl BasicAuth {
    /// Whether an `Authorization` header value names one of `users` with its password.
    pub async fn admits(&self, users: &[User], header: Option<&[u8]>) -> bool {
        let Some((name, password)) = header.and_then(credentials) else {
            return false;
        };
        let hash = find(users, &name).map(|u| u.hash.clone());
        let key = hash.as_ref().map(|h| fingerprint(&name, h, &password));
        if key.as_ref().is_some_and(|key| self.remembers(key)) {
            return true;
        }
        let Ok(permit) = Arc::clone(&self.bcrypt).acquire_owned().await else {
            return false;
        };
        // The check, its permit and remembering its success belong to the blocking task: a
        // client that gives up (a scrape timeout shorter than a slow bcrypt) still leaves the
        // verified password remembered for its next try, and the next bcrypt waits for this.
        let verified = Arc::clone(&self.verified);
        tokio::task::spawn_blocking(move || {
            let hash = hash.as_deref().unwrap_or_else(|| decoy_hash());
            let matches = bcrypt::verify(&password, hash).unwrap_or(false);
            drop(permit);
            match key {
                Some(key) if matches => {
                    remember(&verified, key);
                    true
                }
                _ => false,
            }
        })
        .await
        .unwrap_or(false)
    }

    fn remembers(&self, key: &[u8; 32]) -> bool {
        self.verified
            .lock()
            .is_ok_and(|remembered| remembered.set.contains(key))
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.verified.lock().map_or(0, |r| r.set.len())
    }
}

/// Adds `key` to the remembered logins, forgetting the oldest beyond [`REMEMBERED`].
fn remember(verified: &Mutex<Remembered>, key: [u8; 32]) {
    let Ok(mut remembered) = verified.lock() else {
        return;
    };
    if remembered.set.contains(&key) {
        return;
    }
    if remembered.order.len() >= REMEMBERED
        && let Some(oldest) = remembered.order.pop_front()
    {
        remembered.set.remove(&oldest);
    }
    remembered.order.push_back(key);
    remembered.set.insert(key);
}

/// The user among `users` named `name`, every name compared in constant time (no early
/// exit on the first match or mismatch).
fn find<'a>(users: &'a [User], name: &[u8]) -> Option<&'a User> {
    let mut found = subtle::Choice::from(0);
    let mut index = 0u32;
    for (i, user) in (0u32..).zip(users) {
        let same = user.name.as_bytes().ct_eq(name);
        index.conditional_assign(&i, same);
        found |= same;
    }
    bool::from(found)
        .then(|| usize::try_from(index).ok())
        .flatten()
        .and_then(|i| users.get(i))
}

/// Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
fn fingerprint(name: &[u8], hash: &str, password: &[u8]) -> [u8; 32] {
    let mut sha = Sha256::new();
    for part in [name, hash.as_bytes(), password] {
        sha.update((part.len() as u64).to_be_bytes());
        sha.update(part);
    }
    sha.finalize().into()
}

/// User and password from `Basic base64(user:password)` (RFC 7617; the scheme's case does
/// not matter).
fn credentials(header: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (scheme, encoded) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> Vec<u8> {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}").into_bytes()
    }

    /// Cost 4, bcrypt's least, so that the test is quick.
    fn users() -> Vec<User> {
        vec![
            User {
                name: "alice".into(),
                hash: bcrypt::hash("wonderland", 4).expect("hash"),
            },
            User {
                name: "bob".into(),
                hash: bcrypt::hash("builder", 4).expect("hash"),
            },
        ]
    }

    #[test]
    fn credentials_are_parsed_as_rfc_7617_says() {
        assert_eq!(
            credentials(&header("alice", "a:b")),
            Some((b"alice".to_vec(), b"a:b".to_vec()))
        );
        assert_eq!(
            credentials(b"bAsIc YWxpY2U6eA=="),
            Some((b"alice".to_vec(), b"x".to_vec()))
        );
        assert_eq!(credentials(b"Bearer YWxpY2U6eA=="), None);
        assert_eq!(credentials(b"Basic !!!"), None);
        assert_eq!(credentials(b"Basic YWxpY2U="), None, "no colon");
        assert_eq!(credentials(b"Basic"), None);
    }

    #[test]
    fn users_are_found_by_exact_name() {
        let users = users();
        assert_eq!(find(&users, b"bob").map(|u| u.name.as_str()), Some("bob"));
        assert_eq!(
            find(&users, b"alice").map(|u| u.name.as_str()),
            Some("alice")
        );
        assert!(find(&users, b"ali").is_none());
        assert!(find(&users, b"alicee").is_none());
        assert!(find(&[], b"alice").is_none());
    }

    #[test]
    fn the_decoy_hash_is_a_cost_10_bcrypt_hash() {
        let parts: bcrypt::HashParts = decoy_hash().parse().expect("decoy parses");
        assert_eq!(parts.get_cost(), 10);
    }

    #[tokio::test]
    async fn right_passwords_pass_and_are_remembered_wrong_ones_are_not() {
        let auth = BasicAuth::default();
        let users = users();
        assert!(
            auth.admits(&users, Some(&header("alice", "wonderland")))
                .await
        );
        assert_eq!(auth.remembered(), 1);
        // Remembered: no second bcrypt, same answer.
        assert!(
            auth.admits(&users, Some(&header("alice", "wonderland")))
                .await
        );
        assert_eq!(auth.remembered(), 1);
        assert!(!auth.admits(&users, Some(&header("alice", "builder"))).await);
        assert!(
            !auth
                .admits(&users, Some(&header("bob", "wonderland")))
                .await
        );
        assert!(
            !auth
                .admits(&users, Some(&header("carol", "wonderland")))
                .await
        );
        assert!(!auth.admits(&users, None).await);
        assert_eq!(auth.remembered(), 1, "failures are not remembered");
        assert!(auth.admits(&users, Some(&header("bob", "builder"))).await);
        assert_eq!(auth.remembered(), 2);
        // A changed hash (a new password in the config) is a new key: the old password
        // remembered for the old hash does not pass.
        let changed = vec![User {
            name: "alice".into(),
            hash: bcrypt::hash("looking-glass", 4).expect("hash"),
        }];
        assert!(
            !auth
                .admits(&changed, Some(&header("alice", "wonderland")))
                .await
        );
    }

    #[tokio::test]
    async fn a_client_that_gives_up_still_leaves_its_password_remembered() {
        let auth = BasicAuth::default();
        let users = vec![User {
            name: "slow".into(),
            hash: bcrypt::hash("patience", 8).expect("hash"),
        }];
        let login = header("slow", "patience");
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(1),
            auth.admits(&users, Some(&login)),
        )
        .await;
        assert!(gave_up.is_err(), "bcrypt at cost 8 takes longer than 1 ms");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while auth.remembered() == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(auth.remembered(), 1);
    }

    #[test]
    fn the_memory_is_bounded_oldest_out() {
        let auth = BasicAuth::default();
        for i in 0..(REMEMBERED as u64 + 10) {
            remember(&auth.verified, fingerprint(&i.to_be_bytes(), "h", b"p"));
        }
        assert_eq!(auth.remembered(), REMEMBERED);
        assert!(!auth.remembers(&fingerprint(&0u64.to_be_bytes(), "h", b"p")));
        assert!(auth.remembers(&fingerprint(
            &(REMEMBERED as u64 + 9).to_be_bytes(),
            "h",
            b"p"
        )));
    }
}

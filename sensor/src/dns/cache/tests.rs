use std::{
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::*;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a test address")
}

fn answer(pid: Option<u32>, name: &str, addrs: &[(&str, u32)]) -> DnsAnswer {
    DnsAnswer {
        pid,
        name: name.to_owned(),
        addrs: addrs.iter().map(|(a, ttl)| (ip(a), *ttl)).collect(),
    }
}

fn cache(grace_s: u64, max_addresses: usize) -> NameCache {
    NameCache::new(Duration::from_secs(grace_s), max_addresses)
}

fn name(cache: &NameCache, now: u64, addr: &str, pid: u32) -> Option<String> {
    cache.lookup(at(now), ip(addr), pid).map(|n| n.to_string())
}

#[test]
fn a_name_lasts_its_ttl_plus_the_grace_and_not_a_second_more() {
    let mut c = cache(60, 16);
    c.learn(
        at(0),
        &[answer(
            Some(7),
            "upload.example.test",
            &[("198.51.100.2", 30), ("2001:db8::2", 300)],
        )],
    );
    assert_eq!(c.len(), 2);
    // TTL 30 s + grace 60 s: named through second 90, not at 91.
    assert_eq!(
        name(&c, 90, "198.51.100.2", 7).as_deref(),
        Some("upload.example.test")
    );
    assert_eq!(name(&c, 91, "198.51.100.2", 7), None);
    // The AAAA record's own TTL (300 s) counts for it.
    assert_eq!(
        name(&c, 360, "2001:db8::2", 9).as_deref(),
        Some("upload.example.test")
    );
    assert_eq!(name(&c, 361, "2001:db8::2", 9), None);
    assert_eq!(name(&c, 0, "198.51.100.3", 7), None);
    // An IPv4 connection from an IPv6 socket: the A record names it.
    assert_eq!(
        name(&c, 90, "::ffff:198.51.100.2", 7).as_deref(),
        Some("upload.example.test")
    );
    // Pruning drops the address whose names all ran out, keeps the other.
    c.prune(at(91));
    assert_eq!(c.len(), 1);
    c.prune(at(361));
    assert_eq!(c.len(), 0);
}

#[test]
fn the_name_the_same_process_resolved_wins_over_a_more_recent_one() {
    let mut c = cache(0, 16);
    c.learn(
        at(0),
        &[
            answer(
                Some(100),
                "files.example-storage.net",
                &[("198.51.100.9", 600)],
            ),
            answer(Some(200), "cdn.example.org", &[("198.51.100.9", 600)]),
        ],
    );
    assert_eq!(
        name(&c, 10, "198.51.100.9", 100).as_deref(),
        Some("files.example-storage.net")
    );
    assert_eq!(
        name(&c, 10, "198.51.100.9", 200).as_deref(),
        Some("cdn.example.org")
    );
    // A process that resolved neither gets the most recent answer.
    assert_eq!(
        name(&c, 10, "198.51.100.9", 300).as_deref(),
        Some("cdn.example.org")
    );
    // An answer whose pid the kernel did not know names the address for everyone.
    c.learn(
        at(20),
        &[answer(None, "other.example.org", &[("198.51.100.9", 600)])],
    );
    assert_eq!(
        name(&c, 20, "198.51.100.9", 300).as_deref(),
        Some("other.example.org")
    );
    assert_eq!(
        name(&c, 20, "198.51.100.9", 100).as_deref(),
        Some("files.example-storage.net")
    );
}

#[test]
fn a_same_pid_name_past_its_expiry_gives_way_to_a_fresh_one() {
    let mut c = cache(10, 16);
    c.learn(
        at(0),
        &[answer(
            Some(100),
            "old.example.org",
            &[("198.51.100.9", 20)],
        )],
    );
    c.learn(
        at(5),
        &[answer(
            Some(200),
            "new.example.org",
            &[("198.51.100.9", 600)],
        )],
    );
    assert_eq!(
        name(&c, 30, "198.51.100.9", 100).as_deref(),
        Some("old.example.org")
    );
    assert_eq!(
        name(&c, 31, "198.51.100.9", 100).as_deref(),
        Some("new.example.org")
    );
}

#[test]
fn a_name_answered_again_is_refreshed_and_most_recent() {
    let mut c = cache(0, 16);
    c.learn(
        at(0),
        &[answer(Some(1), "a.example.org", &[("198.51.100.4", 60)])],
    );
    c.learn(
        at(10),
        &[answer(Some(1), "b.example.org", &[("198.51.100.4", 60)])],
    );
    assert_eq!(
        name(&c, 10, "198.51.100.4", 5).as_deref(),
        Some("b.example.org")
    );
    // a.example.org answered again at 50 with a new TTL: the most recent, good until 110.
    c.learn(
        at(50),
        &[answer(Some(1), "a.example.org", &[("198.51.100.4", 60)])],
    );
    assert_eq!(
        name(&c, 50, "198.51.100.4", 5).as_deref(),
        Some("a.example.org")
    );
    assert_eq!(
        name(&c, 110, "198.51.100.4", 5).as_deref(),
        Some("a.example.org")
    );
    // b ran out at 70: after a's second expiry nothing is left.
    assert_eq!(name(&c, 111, "198.51.100.4", 1), None);
}

#[test]
fn at_most_four_names_per_address_the_least_recently_answered_go() {
    let mut c = cache(0, 16);
    for (i, n) in ["n1", "n2", "n3", "n4", "n5"].iter().enumerate() {
        let pid = u32::try_from(i).expect("small") + 1;
        c.learn(at(0), &[answer(Some(pid), n, &[("198.51.100.4", 60)])]);
    }
    // n1 (pid 1) went: pid 1 gets the most recent, n5.
    assert_eq!(name(&c, 1, "198.51.100.4", 1).as_deref(), Some("n5"));
    assert_eq!(name(&c, 1, "198.51.100.4", 2).as_deref(), Some("n2"));
    assert_eq!(c.len(), 1);
}

#[test]
fn beyond_max_addresses_the_least_recently_answered_address_goes() {
    let mut c = cache(0, 3);
    c.learn(
        at(0),
        &[
            answer(Some(1), "a.example", &[("198.51.100.1", 600)]),
            answer(Some(1), "b.example", &[("198.51.100.2", 600)]),
            answer(Some(1), "c.example", &[("198.51.100.3", 600)]),
        ],
    );
    // .1 answered again: .2 is now the least recently answered.
    c.learn(
        at(1),
        &[answer(Some(1), "a.example", &[("198.51.100.1", 600)])],
    );
    c.learn(
        at(2),
        &[answer(Some(1), "d.example", &[("198.51.100.4", 600)])],
    );
    assert_eq!(c.len(), 3);
    assert_eq!(c.evictions, 1);
    assert_eq!(name(&c, 2, "198.51.100.2", 1), None);
    assert_eq!(name(&c, 2, "198.51.100.1", 1).as_deref(), Some("a.example"));
    assert_eq!(name(&c, 2, "198.51.100.3", 1).as_deref(), Some("c.example"));
    assert_eq!(name(&c, 2, "198.51.100.4", 1).as_deref(), Some("d.example"));
    // One answer with more addresses than the bound keeps its last ones.
    c.learn(
        at(3),
        &[answer(
            None,
            "many.example",
            &[
                ("192.0.2.1", 60),
                ("192.0.2.2", 60),
                ("192.0.2.3", 60),
                ("192.0.2.4", 60),
            ],
        )],
    );
    assert_eq!(c.len(), 3);
    assert_eq!(c.evictions, 5);
    assert_eq!(name(&c, 3, "192.0.2.1", 1), None);
    assert_eq!(name(&c, 3, "192.0.2.4", 1).as_deref(), Some("many.example"));
}

#[test]
fn answers_without_a_name_or_addresses_are_ignored() {
    let mut c = cache(0, 3);
    c.learn(
        at(0),
        &[
            answer(Some(1), "", &[("198.51.100.1", 600)]),
            answer(Some(1), "x.example", &[]),
        ],
    );
    assert!(c.is_empty());
}

/// Against a model that keeps every answer: the cache never holds more than its bound, and
/// while nothing was evicted it names each address as the model does (the pid's own most
/// recent fresh answer among the address's last four (name, pid) pairs, else the most recent
/// fresh one).
mod model {
    use proptest::prelude::*;

    use super::*;

    /// (seconds after the previous answer, pid, name, address, ttl).
    type Step = (u64, Option<u32>, u8, u8, u32);

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            (
                0..20_u64,
                prop::option::of(1..4_u32),
                0..6_u8,
                0..3_u8,
                0..120_u32,
            ),
            1..80,
        )
    }

    fn addr(i: u8) -> IpAddr {
        IpAddr::from([198, 51, 100, i])
    }

    /// What the model names `addr` for `pid` at `now`.
    fn expected(
        answers: &[(u64, Option<u32>, u8, u8, u32)],
        now: u64,
        a: u8,
        pid: u32,
        grace: u64,
    ) -> Option<String> {
        // The address's (name, pid) pairs, most recent last, each at its latest answer.
        let mut pairs: Vec<(u64, Option<u32>, u8, u32)> = Vec::new();
        for &(at, p, n, ad, ttl) in answers {
            if ad != a {
                continue;
            }
            pairs.retain(|&(_, q, m, _)| !(q == p && m == n));
            if pairs.len() == NAMES_PER_ADDRESS {
                pairs.remove(0);
            }
            pairs.push((at, p, n, ttl));
        }
        let fresh: Vec<_> = pairs
            .iter()
            .rev()
            .filter(|(at, _, _, ttl)| now <= at + u64::from(*ttl) + grace)
            .collect();
        fresh
            .iter()
            .find(|(_, p, _, _)| *p == Some(pid))
            .or_else(|| fresh.first())
            .map(|(_, _, n, _)| format!("n{n}.example"))
    }

    proptest! {
        #[test]
        fn the_cache_names_as_the_model_and_stays_bounded(steps in steps(), grace in 0..30_u64, bound in 1..6_usize) {
            let mut c = cache(grace, bound);
            let mut now = 0;
            let mut answers = Vec::new();
            for (gap, pid, n, a, ttl) in steps {
                now += gap;
                c.learn(at(now), &[answer(pid, &format!("n{n}.example"), &[(&addr(a).to_string(), ttl)])]);
                answers.push((now, pid, n, a, ttl));
                prop_assert!(c.len() <= bound);
                if c.evictions == 0 {
                    for later in [now, now + 30, now + 90] {
                        for a in 0..3 {
                            for pid in 1..4 {
                                prop_assert_eq!(
                                    name(&c, later, &addr(a).to_string(), pid),
                                    expected(&answers, later, a, pid, grace),
                                    "address {} pid {} at {}", a, pid, later
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

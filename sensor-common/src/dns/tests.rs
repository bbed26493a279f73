//! The parser on hand-made response layouts and on generated ones.

use std::{string::String, vec::Vec};

use proptest::prelude::*;

use super::*;
use crate::DNS_NAME_LEN;

/// A response under construction: header, question, answers.
struct Builder {
    bytes: Vec<u8>,
    answers: u16,
}

impl Builder {
    /// A NOERROR response to one question of `qtype` for `name` (written out in full).
    fn response(name: &str, qtype: u16) -> Self {
        let mut bytes = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        bytes.extend(wire(name));
        bytes.extend(qtype.to_be_bytes());
        bytes.extend(CLASS_IN.to_be_bytes());
        Self { bytes, answers: 0 }
    }

    /// Where the next byte goes.
    fn here(&self) -> u16 {
        self.bytes.len() as u16
    }

    /// A record: owner given as raw wire bytes (a name or a pointer), type, TTL, data.
    fn record(mut self, owner: &[u8], rtype: u16, ttl: u32, data: &[u8]) -> Self {
        self.bytes.extend(owner);
        self.bytes.extend(rtype.to_be_bytes());
        self.bytes.extend(CLASS_IN.to_be_bytes());
        self.bytes.extend(ttl.to_be_bytes());
        self.bytes.extend((data.len() as u16).to_be_bytes());
        self.bytes.extend(data);
        self.answers += 1;
        self
    }

    fn bytes(mut self) -> Vec<u8> {
        self.bytes[6..8].copy_from_slice(&self.answers.to_be_bytes());
        self.bytes
    }
}

/// A name in wire form, uncompressed.
fn wire(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend(label.as_bytes());
    }
    out.push(0);
    out
}

fn ptr(to: u16) -> [u8; 2] {
    (0xc000 | to).to_be_bytes()
}

/// What a parse found: the verdict, the name and the (family, address bytes, TTL) answers.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    verdict: Verdict,
    name: String,
    addrs: Vec<(u8, Vec<u8>, u32)>,
}

fn run(bytes: &[u8]) -> Parsed {
    let mut window = [0u8; DNS_WINDOW];
    let len = bytes.len().min(DNS_WINDOW);
    window[..len].copy_from_slice(&bytes[..len]);
    let mut event = DnsEvent::EMPTY;
    let verdict = parse::<Plain>(
        &Message::new(&window, bytes.len(), false),
        &mut event,
        &mut { ParseRegs::EMPTY },
    );
    let name = String::from_utf8_lossy(&event.name[..usize::from(event.name_len)]).into_owned();
    let addrs = event.addrs[..usize::from(event.count)]
        .iter()
        .map(|a| {
            let size = if a.family == FAMILY_IPV4 { 4 } else { 16 };
            (a.family, a.addr[..size].to_vec(), a.ttl)
        })
        .collect();
    Parsed {
        verdict,
        name,
        addrs,
    }
}

fn v4(a: [u8; 4], ttl: u32) -> (u8, Vec<u8>, u32) {
    (FAMILY_IPV4, a.to_vec(), ttl)
}

fn answer(name: &str, addrs: Vec<(u8, Vec<u8>, u32)>) -> Parsed {
    Parsed {
        verdict: Verdict::Answer,
        name: name.into(),
        addrs,
    }
}

#[test]
fn one_a_record_owned_by_a_pointer_to_the_question() {
    let msg = Builder::response("Upload.Example.TEST", TYPE_A)
        .record(&ptr(12), TYPE_A, 300, &[198, 51, 100, 2])
        .bytes();
    assert_eq!(
        run(&msg),
        answer("upload.example.test", vec![v4([198, 51, 100, 2], 300)])
    );
}

#[test]
fn several_answers_in_order_and_at_most_eight() {
    let mut b = Builder::response("many.example.test", TYPE_A);
    for i in 0..10u8 {
        b = b.record(&ptr(12), TYPE_A, 60 + u32::from(i), &[192, 0, 2, i]);
    }
    let expected = (0..8u8)
        .map(|i| v4([192, 0, 2, i], 60 + u32::from(i)))
        .collect();
    assert_eq!(run(&b.bytes()), answer("many.example.test", expected));
}

#[test]
fn a_cname_chain_is_followed_and_other_owners_are_not_taken() {
    // www.example.test CNAME edge.cdn.test (target written with a pointer to "test" of the
    // question), edge.cdn.test CNAME e1.cdn.test (pointer into the previous target), then the
    // A of e1, an A of an unrelated name, and the AAAA of e1 written out in full.
    let b = Builder::response("www.example.test", TYPE_A);
    let first_target = b.here() + 12; // after the record's pointer owner and fixed fields
    let mut target = vec![4];
    target.extend(b"edge");
    target.extend([3]);
    target.extend(b"cdn");
    target.extend(ptr(12 + 4 + 8)); // "test" in the question
    let b = b.record(&ptr(12), TYPE_CNAME, 30, &target);
    let second_target = b.here() + 12;
    let mut target2 = vec![2];
    target2.extend(b"e1");
    target2.extend(ptr(first_target + 5)); // "cdn.test"
    let b = b
        .record(&ptr(first_target), TYPE_CNAME, 30, &target2)
        .record(&ptr(second_target), TYPE_A, 20, &[198, 51, 100, 7])
        .record(&wire("other.test"), TYPE_A, 20, &[198, 51, 100, 8])
        .record(
            &wire("E1.cdn.test"),
            TYPE_AAAA,
            40,
            &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
        );
    assert_eq!(
        run(&b.bytes()),
        answer(
            "www.example.test",
            vec![
                v4([198, 51, 100, 7], 20),
                (
                    FAMILY_IPV6,
                    vec![0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
                    40
                ),
            ]
        )
    );
}

#[test]
fn an_address_of_the_question_name_after_a_cname_is_not_taken() {
    // The chain moved on to alias.test: an A still owned by the question is not its answer.
    let msg = Builder::response("q.test", TYPE_A)
        .record(&ptr(12), TYPE_CNAME, 30, &wire("alias.test"))
        .record(&ptr(12), TYPE_A, 30, &[192, 0, 2, 1])
        .bytes();
    assert_eq!(run(&msg).verdict, Verdict::Ignored(Ignored::NoAddress));
}

#[test]
fn every_truncation_of_a_good_response_is_refused() {
    let msg = Builder::response("cut.example.test", TYPE_A)
        .record(&ptr(12), TYPE_A, 300, &[198, 51, 100, 2])
        .record(&ptr(12), TYPE_AAAA, 300, &[1; 16])
        .record(&ptr(12), 16, 300, b"\x04text")
        .bytes();
    assert_eq!(run(&msg).verdict, Verdict::Answer);
    for len in 0..msg.len() {
        assert_eq!(
            run(&msg[..len]).verdict,
            Verdict::Malformed(Malformed::Truncated),
            "cut at {len}"
        );
    }
}

#[test]
fn looping_forward_self_and_header_pointers_are_refused() {
    // A name whose labels run into a pointer back to their own start: a loop that a rule
    // of "before the pointer itself" would follow until its hop limit.
    let looping = {
        let b = Builder::response("loop.test", TYPE_A);
        let first = b.here();
        let mut owner = vec![1, b'x'];
        owner.extend(ptr(first));
        b.record(&owner, TYPE_A, 1, &[192, 0, 2, 1]).bytes()
    };
    assert_eq!(
        run(&looping).verdict,
        Verdict::Malformed(Malformed::BadPointer)
    );
    let b = Builder::response("self.test", TYPE_A);
    let at = b.here();
    let itself = b.record(&ptr(at), TYPE_A, 1, &[192, 0, 2, 1]).bytes();
    assert_eq!(
        run(&itself).verdict,
        Verdict::Malformed(Malformed::BadPointer)
    );
    let b = Builder::response("fwd.test", TYPE_A);
    let ahead = b.here() + 2 + 10 + 4;
    let forward = b
        .record(&ptr(ahead), TYPE_A, 1, &[192, 0, 2, 1])
        .record(&wire("fwd.test"), TYPE_A, 1, &[192, 0, 2, 2])
        .bytes();
    assert_eq!(
        run(&forward).verdict,
        Verdict::Malformed(Malformed::BadPointer)
    );
    let header = Builder::response("hdr.test", TYPE_A)
        .record(&ptr(4), TYPE_A, 1, &[192, 0, 2, 1])
        .bytes();
    assert_eq!(
        run(&header).verdict,
        Verdict::Malformed(Malformed::BadPointer)
    );
    // A question name is first: no pointer in it can point backwards past the header.
    let mut question = Builder::response("x.test", TYPE_A).bytes();
    question.splice(12..20, ptr(12));
    assert_eq!(
        run(&question).verdict,
        Verdict::Malformed(Malformed::BadPointer)
    );
}

#[test]
fn bad_names_and_records_are_refused() {
    let long = ["a".repeat(63).as_str(); 4].join(".");
    let msg = Builder::response(&long, TYPE_A).bytes();
    assert_eq!(run(&msg).verdict, Verdict::Malformed(Malformed::BadName));
    let just = [
        "a".repeat(63).as_str(),
        &"b".repeat(63),
        &"c".repeat(63),
        &"d".repeat(61),
    ]
    .join(".");
    assert_eq!(wire(&just).len(), 255);
    let msg = Builder::response(&just, TYPE_A)
        .record(&ptr(12), TYPE_A, 5, &[192, 0, 2, 1])
        .bytes();
    assert_eq!(run(&msg), answer(&just, vec![v4([192, 0, 2, 1], 5)]));
    let dotted = Builder::response("a.b", TYPE_A).bytes();
    let mut dotted = dotted;
    dotted[13] = b'.';
    assert_eq!(run(&dotted).verdict, Verdict::Malformed(Malformed::BadName));
    let mut extended = Builder::response("a.b", TYPE_A).bytes();
    extended[12] = 0x41;
    assert_eq!(
        run(&extended).verdict,
        Verdict::Malformed(Malformed::BadName)
    );
    let short_a = Builder::response("a.test", TYPE_A)
        .record(&ptr(12), TYPE_A, 5, &[192, 0, 2])
        .bytes();
    assert_eq!(
        run(&short_a).verdict,
        Verdict::Malformed(Malformed::BadRecord)
    );
    let mut cname = wire("t.test");
    cname.push(0);
    let long_cname = Builder::response("a.test", TYPE_A)
        .record(&ptr(12), TYPE_CNAME, 5, &cname)
        .bytes();
    assert_eq!(
        run(&long_cname).verdict,
        Verdict::Malformed(Malformed::BadRecord)
    );
}

#[test]
fn owners_pointing_at_the_question_are_not_walked_again_and_a_costly_parse_is_cut() {
    let long = [
        "a".repeat(63).as_str(),
        &"b".repeat(63),
        &"c".repeat(63),
        &"d".repeat(61),
    ]
    .join(".");
    // Fifteen records whose owners point at the 255-byte question: cheap, taken.
    let mut b = Builder::response(&long, TYPE_A);
    for i in 0..15u8 {
        b = b.record(&ptr(12), TYPE_A, 1, &[192, 0, 2, i]);
    }
    let msg = b.bytes();
    assert!(msg.len() <= DNS_WINDOW);
    let expected = (0..8u8).map(|i| v4([192, 0, 2, i], 1)).collect();
    assert_eq!(run(&msg), answer(&long, expected));
    // The same owners pointing at the question's second label instead: each a 192-byte walk
    // and a comparison, more than a parse may take.
    let mut b = Builder::response(&long, TYPE_A);
    for i in 0..15u8 {
        b = b.record(&ptr(12 + 64), TYPE_A, 1, &[192, 0, 2, i]);
    }
    assert_eq!(
        run(&b.bytes()).verdict,
        Verdict::Malformed(Malformed::TooComplex)
    );
}

#[test]
fn queries_errors_and_truncated_answers_are_ignored() {
    let mut query = Builder::response("q.test", TYPE_A).bytes();
    query[2] = 0x01;
    assert_eq!(run(&query).verdict, Verdict::Ignored(Ignored::NotAnswer));
    let mut nx = Builder::response("q.test", TYPE_A).bytes();
    nx[3] = 0x83;
    assert_eq!(run(&nx).verdict, Verdict::Ignored(Ignored::Error));
    let mut tc = Builder::response("q.test", TYPE_A)
        .record(&ptr(12), TYPE_A, 5, &[192, 0, 2, 1])
        .bytes();
    tc[2] |= 0x02;
    assert_eq!(run(&tc).verdict, Verdict::Ignored(Ignored::NotAnswer));
    let mut two = Builder::response("q.test", TYPE_A).bytes();
    two[5] = 2;
    assert_eq!(run(&two).verdict, Verdict::Ignored(Ignored::Question));
    let txt = Builder::response("q.test", 16)
        .record(&ptr(12), 16, 5, b"\x05hello")
        .bytes();
    assert_eq!(run(&txt).verdict, Verdict::Ignored(Ignored::NoAddress));
}

#[test]
fn a_message_longer_than_the_window_gives_the_answers_inside_it() {
    let mut b = Builder::response("big.test", TYPE_A);
    for i in 0..16u8 {
        b = b.record(&ptr(12), 16, 5, &[200; 40]);
        if i == 1 {
            b = b.record(&ptr(12), TYPE_A, 7, &[192, 0, 2, 1]);
        }
    }
    let msg = b.bytes();
    assert!(msg.len() > DNS_WINDOW);
    assert_eq!(run(&msg), answer("big.test", vec![v4([192, 0, 2, 1], 7)]));
    // The same window, taken as the whole message: truncated.
    assert_eq!(
        run(&msg[..DNS_WINDOW]).verdict,
        Verdict::Malformed(Malformed::Truncated)
    );
}

/// A generated response: question, CNAME chain, addresses; each name that was written before
/// written again in full or as a pointer, as the generator chose.
#[derive(Debug, Clone)]
struct Generated {
    question: String,
    chain: Vec<String>,
    addrs: Vec<(bool, [u8; 16], u32)>,
    compress: Vec<bool>,
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-zA-Z0-9_-]{1,12}", 1..5).prop_map(|labels| labels.join("."))
}

fn generated() -> impl Strategy<Value = Generated> {
    (
        name(),
        prop::collection::vec(name(), 0..4),
        prop::collection::vec((any::<bool>(), any::<[u8; 16]>(), 0u32..=0x7fff_ffff), 1..9),
        prop::collection::vec(any::<bool>(), 16),
    )
        .prop_map(|(question, chain, addrs, compress)| Generated {
            question,
            chain,
            addrs,
            compress,
        })
}

impl Generated {
    fn encode(&self) -> Vec<u8> {
        let mut b = Builder::response(&self.question, TYPE_A);
        // Where the current end of the chain is written.
        let mut at = 12u16;
        let mut end = &self.question;
        let mut flips = self.compress.iter().cycle();
        let mut owner = |at: u16, end: &str| -> Vec<u8> {
            if *flips.next().unwrap_or(&true) {
                ptr(at).to_vec()
            } else {
                wire(end)
            }
        };
        for target in &self.chain {
            let o = owner(at, end);
            at = b.here() + o.len() as u16 + 10;
            b = b.record(&o, TYPE_CNAME, 60, &wire(target));
            end = target;
        }
        for (v6, addr, ttl) in &self.addrs {
            let o = owner(at, end);
            b = if *v6 {
                b.record(&o, TYPE_AAAA, *ttl, addr)
            } else {
                b.record(&o, TYPE_A, *ttl, &addr[..4])
            };
        }
        b.bytes()
    }

    fn expected(&self) -> Parsed {
        let addrs = self
            .addrs
            .iter()
            .map(|(v6, addr, ttl)| {
                if *v6 {
                    (FAMILY_IPV6, addr.to_vec(), *ttl)
                } else {
                    (FAMILY_IPV4, addr[..4].to_vec(), *ttl)
                }
            })
            .collect();
        answer(&self.question.to_ascii_lowercase(), addrs)
    }
}

proptest! {
    #[test]
    fn any_bytes_parse_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), clipped: bool) {
        let mut window = [0u8; DNS_WINDOW];
        let len = bytes.len().min(DNS_WINDOW);
        window[..len].copy_from_slice(&bytes[..len]);
        let mut event = DnsEvent::EMPTY;
        let verdict = parse::<Plain>(&Message::new(&window, bytes.len(), clipped), &mut event, &mut { ParseRegs::EMPTY });
        prop_assert!(usize::from(event.count) <= DNS_ADDRS);
        prop_assert!(usize::from(event.name_len) < DNS_NAME_LEN);
        if verdict == Verdict::Answer {
            prop_assert!(event.count > 0);
        }
    }

    #[test]
    fn any_bytes_after_a_good_header_parse_without_panic(tail in prop::collection::vec(any::<u8>(), 0..500)) {
        let mut msg = Builder::response("h.test", TYPE_A).bytes();
        msg[7] = 16;
        msg.extend(tail);
        let _ = run(&msg);
    }

    #[test]
    fn generated_responses_parse_back(g in generated()) {
        let msg = g.encode();
        prop_assume!(msg.len() <= DNS_WINDOW);
        prop_assert_eq!(run(&msg), g.expected());
    }
}

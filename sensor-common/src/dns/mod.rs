//! The DNS response parser, written once for both sides: the kernel's ingress program runs it
//! on each response it copies into its scratch window, and the agent's tests run the very same
//! code on hand-made and generated messages.
//!
//! It is shaped for the verifier: every byte is read through [`Message::byte`], whose index is
//! masked to the window (so no read can leave it, whatever a position holds), and every loop is
//! a [`Step`] run a constant number of times by a [`Repeat`]: [`Plain`] here, a `bpf_loop` in
//! the kernel, whose verifier then checks each step's body once instead of every iteration
//! (verified as plain bounded loops, the name walks inside the record loop came to more than
//! its million instructions).
//!
//! What it takes from a message (RFC 1035 §4.1): the question name, and up to [`DNS_ADDRS`]
//! A/AAAA records with their TTLs, among the first [`MAX_RECORDS`] answer records, whose owner
//! is the question name or the target of the CNAME chain that starts there (a chain is followed
//! in answer order, as servers write it: a CNAME whose owner is the current end of the chain
//! moves the end to its target). Everything else in the message is never read.
//!
//! Names: at most 255 bytes in wire form (RFC 1035 §3.1), labels of printable ASCII without a
//! dot, lower-cased; compression pointers (§4.1.4) at most [`MAX_HOPS`] per name, each pointing
//! strictly before the labels that led to it and past the header, so that no chain of them can
//! loop. A message that breaks any of this, or ends before what its header claims, is
//! [`Verdict::Malformed`] with a [`Malformed`] reason; a well-formed message this parser does
//! not take (a query, an error, no address) is [`Verdict::Ignored`].

mod name;

pub use self::name::Message;
use self::name::{NameCursor, Step_, spelt};
use crate::{DnsAddr, DnsEvent, FAMILY_IPV4, FAMILY_IPV6};

/// Bytes of a DNS message the kernel copies and parses: the classic UDP limit (RFC 1035
/// §4.2.1). A power of two, so that an index masked with `DNS_WINDOW - 1` stays inside.
pub const DNS_WINDOW: usize = 512;
const WINDOW_MASK: usize = DNS_WINDOW - 1;

/// A/AAAA answers kept per response (a [`DnsEvent`] holds this many).
pub const DNS_ADDRS: usize = 8;
/// Answer records examined per response; later ones are not read.
pub const MAX_RECORDS: usize = 16;
/// Compression pointers followed per name.
pub const MAX_HOPS: u8 = 8;
/// A name's longest wire form (RFC 1035 §3.1), length bytes and the root's zero included.
pub const MAX_NAME_WIRE: u16 = 255;

const HEADER_LEN: usize = 12;

/// Every position, count and length a step keeps is stored masked with this (a no-op: none
/// exceeds it), so that the verifier, which then bounds it by the mask alone, finds a step's
/// state equal to the last one's instead of one whose range moved on by a byte.
const WIDE: usize = 2 * DNS_WINDOW - 1;
const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// One iteration of a loop.
pub trait Step {
    /// Does one iteration; `false` ends the loop.
    fn step(&mut self) -> bool;
}

/// What runs loops: at most `times` steps, until one returns `false`.
pub trait Repeat {
    fn repeat<S: Step>(times: u32, state: &mut S);
}

/// A plain `for` loop, for userspace.
pub struct Plain;

impl Repeat for Plain {
    fn repeat<S: Step>(times: u32, state: &mut S) {
        for _ in 0..times {
            if !state.step() {
                break;
            }
        }
    }
}

/// Why a response was refused as malformed; the values index the kernel's DNS counters and
/// name the `reason` label of `exfil_sensor_dns_malformed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Malformed {
    /// The message ends before its header, question or a record it announces.
    Truncated = 1,
    /// A compression pointer pointing forward, at itself, into the header or past the
    /// chain that led to it (a loop), or more than [`MAX_HOPS`] of them.
    BadPointer = 2,
    /// A label of a reserved type, a name longer than 255 bytes, a byte that is not
    /// printable ASCII or a dot inside a label.
    BadName = 3,
    /// An A record whose data is not 4 bytes, an AAAA not 16, a CNAME whose data is not
    /// exactly one name.
    BadRecord = 4,
    /// More than [`PARSE_STEPS`] steps: names walked again and again through pointers to
    /// where no owner or target of a real response points (a parse's cost is bounded so that
    /// crafted responses cannot make the kernel spend long on each).
    TooComplex = 5,
}

/// Index of the count of responses parsed and sent, in the kernel's DNS counters.
pub const DNS_STAT_ANSWERS: u32 = 0;
/// Slots of the kernel's DNS counters: answers, then one per [`Malformed`] reason.
pub const DNS_STAT_COUNT: u32 = 6;
/// Names of the slots, in index order: `answers`, then the `reason` labels.
pub const DNS_STAT_NAMES: [&str; DNS_STAT_COUNT as usize] = [
    "answers",
    "truncated",
    "bad_pointer",
    "bad_name",
    "bad_record",
    "too_complex",
];

/// Why a well-formed message was not taken. Not counted: most are ordinary (an NXDOMAIN, an
/// MX lookup, a query seen on its way in to a server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// QR = 0, an opcode other than QUERY, or the TC bit (the client asks again over TCP).
    NotAnswer,
    /// RCODE other than NOERROR.
    Error,
    /// QDCOUNT other than 1, or a question class other than IN.
    Question,
    /// No A or AAAA record answers the question.
    NoAddress,
}

/// What parsing one message came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The event was filled: question name and at least one address.
    Answer,
    Ignored(Ignored),
    Malformed(Malformed),
}

/// Phases of the parse, [`Parse::phase`].
/// Walking the question name, spelling it into the event.
const QUESTION: usize = 0;
/// Walking a record's owner name, to find the record's fixed fields.
const OWNER: usize = 1;
/// Walking a CNAME's target name, to check that it fills the record's data.
const TARGET: usize = 2;
/// Comparing the record's owner with the end of the chain, a spelt byte of each a step.
const COMPARE: usize = 3;

/// The whole parse as one loop of small steps (one wire byte of one name each), so that the
/// kernel runs it as a single `bpf_loop` whose body the verifier checks alone: nested loops
/// (records, and in each the walks of its names) multiplied its work past its limit.
pub struct Parse<'m, 'a, 'o> {
    m: &'m Message<'a>,
    out: &'o mut DnsEvent,
    r: &'o mut ParseRegs,
}

/// The numbers a parse keeps between steps. The kernel keeps them in a map value, whose
/// contents its verifier does not follow: each step then starts from one state (every number
/// unknown), not from one per combination of phase, waiting bytes, positions and record type
/// that came before, which took it past its limits when they lived on the stack.
#[derive(Clone, Copy)]
pub struct ParseRegs {
    phase: usize,
    /// The name being walked (owner, target, or the owner side of a comparison).
    a: NameCursor,
    /// The other side of a comparison: the end of the chain.
    b: NameCursor,
    /// The spelt byte each side of a comparison is waiting with; `NONE` for none, 0 the end.
    xa: usize,
    xb: usize,
    /// Bytes spelt of the question name.
    spelt: usize,
    /// Where the next record starts, and the records left to examine.
    pos: usize,
    records: usize,
    /// The record being examined: its owner, type, TTL, data and the data's end.
    owner: usize,
    rtype: usize,
    ttl: usize,
    rdata: usize,
    rend: usize,
    /// Where the name at the end of the CNAME chain sits (the question's at first).
    chain: usize,
    /// The outcome once known, coded as a number (`NO_VERDICT`, `ANSWER`, `IGNORED | why`,
    /// `MALFORMED | reason`): kept here, not on the stack, for the reason above (a step
    /// entered with each possible outcome was a state of its own, eleven times the work).
    verdict: usize,
}

const NO_VERDICT: usize = 0;
const VERDICT_KIND: usize = 0x30;
const ANSWER: usize = 0x10;
const IGNORED: usize = 0x20;
const MALFORMED: usize = 0x30;

/// No spelt byte waiting.
const NONE: usize = 0x100;

/// The steps a parse may take: 26 µs of the kernel's time at most (measured on 6.18 with
/// responses crafted to use them all; before this bound one took 111 µs). A real response needs far fewer: its owners point at the question or
/// at the chain's target, which are not walked again (`Parse::known_pointer`), and a response
/// written without compression (none seen in practice) walks each of its at most 512 bytes
/// about three times.
pub const PARSE_STEPS: u32 = 2048;

impl<'m, 'a, 'o> Parse<'m, 'a, 'o> {
    /// Reads the header of `m`; a parse to step through, or the verdict already.
    #[inline(always)]
    pub fn new(
        m: &'m Message<'a>,
        out: &'o mut DnsEvent,
        r: &'o mut ParseRegs,
    ) -> Result<Self, Verdict> {
        let header = m.bytes_at::<8>(0).map_err(Verdict::Malformed)?;
        let flags = u16::from_be_bytes([header[2], header[3]]);
        let qdcount = u16::from_be_bytes([header[4], header[5]]);
        let ancount = u16::from_be_bytes([header[6], header[7]]);
        // QR (bit 15), opcode (bits 11-14), TC (bit 9), RCODE (bits 0-3): RFC 1035 §4.1.1.
        if flags & 0x8000 == 0 || flags & 0x7800 != 0 || flags & 0x0200 != 0 {
            return Err(Verdict::Ignored(Ignored::NotAnswer));
        }
        if flags & 0x000f != 0 {
            return Err(Verdict::Ignored(Ignored::Error));
        }
        if qdcount != 1 {
            return Err(Verdict::Ignored(Ignored::Question));
        }
        out.name_len = 0;
        out.count = 0;
        let records = usize::from(ancount);
        *r = ParseRegs {
            phase: QUESTION,
            a: NameCursor::new(HEADER_LEN),
            b: NameCursor::new(HEADER_LEN),
            xa: NONE,
            xb: NONE,
            spelt: 0,
            pos: 0,
            records: if records > MAX_RECORDS {
                MAX_RECORDS
            } else {
                records
            },
            owner: 0,
            rtype: 0,
            ttl: 0,
            rdata: 0,
            rend: 0,
            chain: HEADER_LEN,
            verdict: NO_VERDICT,
        };
        Ok(Self { m, out, r })
    }

    /// The verdict, once the steps ran out or stopped.
    pub fn verdict(&self) -> Verdict {
        let code = self.r.verdict;
        match code & VERDICT_KIND {
            ANSWER => Verdict::Answer,
            IGNORED => Verdict::Ignored(match code & 0xf {
                0 => Ignored::NotAnswer,
                1 => Ignored::Error,
                2 => Ignored::Question,
                _ => Ignored::NoAddress,
            }),
            MALFORMED => Verdict::Malformed(match code & 0xf {
                1 => Malformed::Truncated,
                2 => Malformed::BadPointer,
                3 => Malformed::BadName,
                4 => Malformed::BadRecord,
                _ => Malformed::TooComplex,
            }),
            // None yet: the steps ran out first.
            _ => Verdict::Malformed(Malformed::TooComplex),
        }
    }

    /// Records the outcome; `false`, to end the loop.
    #[inline(always)]
    fn decide(&mut self, verdict: Verdict) -> bool {
        self.r.verdict = match verdict {
            Verdict::Answer => ANSWER,
            Verdict::Ignored(why) => {
                IGNORED
                    | match why {
                        Ignored::NotAnswer => 0,
                        Ignored::Error => 1,
                        Ignored::Question => 2,
                        Ignored::NoAddress => 3,
                    }
            }
            Verdict::Malformed(reason) => MALFORMED | reason as usize,
        };
        false
    }

    #[inline(always)]
    fn fail(&mut self, reason: Malformed) -> bool {
        // In a clipped message, the window's end inside the answers ends them.
        let verdict =
            if reason == Malformed::Truncated && self.m.clipped && self.r.phase != QUESTION {
                self.finished()
            } else {
                Verdict::Malformed(reason)
            };
        self.decide(verdict)
    }

    #[inline(always)]
    fn finished(&self) -> Verdict {
        if self.out.count == 0 {
            Verdict::Ignored(Ignored::NoAddress)
        } else {
            Verdict::Answer
        }
    }

    /// On to the next record, or done.
    #[inline(always)]
    fn next_record(&mut self) -> bool {
        if self.r.records == 0 {
            return self.decide(self.finished());
        }
        self.r.records = (self.r.records - 1) & 0xffff;
        self.r.owner = self.r.pos;
        self.r.a = NameCursor::new(self.r.pos);
        self.r.phase = OWNER;
        true
    }

    /// Compares the record's owner with the end of the chain.
    #[inline(always)]
    fn compare(&mut self) -> bool {
        if self.r.owner == self.r.chain {
            return self.matched();
        }
        self.r.a = NameCursor::new(self.r.owner);
        self.r.b = NameCursor::new(self.r.chain);
        self.r.xa = NONE;
        self.r.xb = NONE;
        self.r.phase = COMPARE;
        true
    }

    /// The record's owner is the end of the chain: take its address, or follow its CNAME.
    #[inline(always)]
    fn matched(&mut self) -> bool {
        if self.r.rtype == usize::from(TYPE_CNAME) {
            self.r.chain = self.r.rdata & WIDE;
            return self.next_record();
        }
        let count = usize::from(self.out.count);
        if count >= DNS_ADDRS {
            return self.next_record();
        }
        let mut addr = DnsAddr {
            addr: [0; 16],
            // RFC 2181 §8: a TTL with the top bit set is taken as zero.
            ttl: if self.r.ttl > 0x7fff_ffff {
                0
            } else {
                self.r.ttl as u32
            },
            family: FAMILY_IPV6,
            _pad: [0; 3],
        };
        // Inside the message: the record's end was checked against it. Two straight copies,
        // not one loop with a bound: 16 branches the kernel's verifier would follow both ways.
        if self.r.rtype == usize::from(TYPE_A) {
            addr.family = FAMILY_IPV4;
            addr.addr[..4].copy_from_slice(&self.addr_bytes::<4>());
        } else {
            addr.addr = self.addr_bytes::<16>();
        }
        self.out.addrs[count & (DNS_ADDRS - 1)] = addr;
        self.out.count += 1;
        self.next_record()
    }

    /// The `N` bytes of the record's data (its end was checked against the message's).
    #[inline(always)]
    fn addr_bytes<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.m.bytes[(self.r.rdata + i) & WINDOW_MASK];
        }
        out
    }

    /// A record's owner was walked to `end`: reads its fixed fields and decides what to do.
    #[inline(always)]
    fn record(&mut self, end: usize) -> Result<bool, Malformed> {
        let m = self.m;
        let f = m.bytes_at::<10>(end)?;
        let rtype = u16::from_be_bytes([f[0], f[1]]);
        let class = u16::from_be_bytes([f[2], f[3]]);
        let ttl = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
        let rdlen = usize::from(u16::from_be_bytes([f[8], f[9]]));
        let rdata = (end + 10) & WIDE;
        let rend = rdata + rdlen;
        if rend > m.len {
            return Err(Malformed::Truncated);
        }
        self.r.pos = rend & WIDE;
        self.r.rtype = usize::from(rtype);
        self.r.ttl = ttl as usize;
        self.r.rdata = rdata;
        self.r.rend = rend & WIDE;
        if class != CLASS_IN {
            return Ok(self.next_record());
        }
        match rtype {
            TYPE_A | TYPE_AAAA => {
                let size = if rtype == TYPE_A { 4 } else { 16 };
                if rdlen != size {
                    return Err(Malformed::BadRecord);
                }
                Ok(self.compare())
            }
            TYPE_CNAME => {
                self.r.a = NameCursor::new(rdata);
                self.r.phase = TARGET;
                Ok(true)
            }
            _ => Ok(self.next_record()),
        }
    }

    /// When the record's owner is a lone pointer to a name already checked (the question's,
    /// or the chain's end): that name's position, and where the owner ends. Servers write
    /// nearly every owner so; walking the name again would cost up to 255 steps a record.
    #[inline(always)]
    fn known_pointer(&self) -> Result<Option<(usize, usize)>, Malformed> {
        let [b0, b1] = self.m.bytes_at::<2>(self.r.owner)?;
        if b0 & 0xc0 != 0xc0 {
            return Ok(None);
        }
        let target = usize::from(b0 & 0x3f) << 8 | usize::from(b1);
        Ok((target == HEADER_LEN || target == self.r.chain)
            .then_some((target, (self.r.owner + 2) & WIDE)))
    }

    #[inline(always)]
    fn walk_step(&mut self) -> Result<Option<usize>, Malformed> {
        match self.r.a.step(self.m)? {
            step @ (Step_::Byte(_) | Step_::Dot(_)) => {
                if self.r.phase == QUESTION {
                    let b = match step {
                        Step_::Byte(b) => b,
                        _ => b'.',
                    };
                    self.out.name[self.r.spelt & (crate::DNS_NAME_LEN - 1)] = b;
                    self.r.spelt = (self.r.spelt + 1) & WIDE;
                }
                Ok(None)
            }
            Step_::Skip => Ok(None),
            Step_::End => Ok(Some(self.r.a.end)),
        }
    }

    #[inline(always)]
    fn try_step(&mut self) -> Result<bool, Malformed> {
        match self.r.phase {
            QUESTION => {
                let Some(end) = self.walk_step()? else {
                    return Ok(true);
                };
                if self.m.u16_at(end + 2)? != CLASS_IN {
                    return Ok(self.decide(Verdict::Ignored(Ignored::Question)));
                }
                self.out.name_len = self.r.spelt as u16;
                self.r.pos = (end + 4) & WIDE;
                Ok(self.next_record())
            }
            OWNER => {
                // Only at the walk's first step: nothing read, no pointer followed.
                if self.r.a.hops == 0
                    && self.r.a.first != 0
                    && self.r.a.pos == self.r.owner
                    && let Some((name, end)) = self.known_pointer()?
                {
                    self.r.owner = name;
                    return self.record(end);
                }
                match self.walk_step()? {
                    Some(end) => self.record(end),
                    None => Ok(true),
                }
            }
            TARGET => match self.walk_step()? {
                Some(end) if end != self.r.rend => Err(Malformed::BadRecord),
                Some(_) => Ok(self.compare()),
                None => Ok(true),
            },
            _ => {
                if self.r.xa == NONE {
                    self.r.xa = spelt(self.r.a.step(self.m)?).map_or(NONE, usize::from);
                }
                if self.r.xb == NONE {
                    self.r.xb = spelt(self.r.b.step(self.m)?).map_or(NONE, usize::from);
                }
                if self.r.xa == NONE || self.r.xb == NONE {
                    return Ok(true);
                }
                if self.r.xa != self.r.xb {
                    return Ok(self.next_record());
                }
                if self.r.xa == 0 {
                    return Ok(self.matched());
                }
                self.r.xa = NONE;
                self.r.xb = NONE;
                Ok(true)
            }
        }
    }
}

impl Step for Parse<'_, '_, '_> {
    #[inline(always)]
    fn step(&mut self) -> bool {
        match self.try_step() {
            Ok(go_on) => go_on,
            Err(reason) => self.fail(reason),
        }
    }
}

impl ParseRegs {
    /// Registers to start a parse with (it sets them all).
    pub const EMPTY: Self = Self {
        phase: 0,
        a: NameCursor::new(0),
        b: NameCursor::new(0),
        xa: 0,
        xb: 0,
        spelt: 0,
        pos: 0,
        records: 0,
        owner: 0,
        rtype: 0,
        ttl: 0,
        rdata: 0,
        rend: 0,
        chain: 0,
        verdict: NO_VERDICT,
    };
}

/// Parses `m` into `out`, its loop run by `R`, keeping its numbers in `regs`.
#[inline(always)]
pub fn parse<R: Repeat>(m: &Message<'_>, out: &mut DnsEvent, regs: &mut ParseRegs) -> Verdict {
    let mut parse = match Parse::new(m, out, regs) {
        Ok(parse) => parse,
        Err(verdict) => return verdict,
    };
    R::repeat(PARSE_STEPS, &mut parse);
    parse.verdict()
}

#[cfg(test)]
mod tests;

//! One segment's bytes, frame by frame: each intact frame, and each damage with where it
//! starts and how many bytes it spans. After damage the scan resynchronises on the next
//! sync marker whose head checks out, and the chain is picked up again there, so every
//! intact frame after the damage is still found. The reader, verify and the writer (at
//! open, for a torn tail) all read segments through this.

use super::format::{self, FRAME_HEAD, FrameHead, HEADER_LEN, Hash, Header, HeaderError};

/// What kind of damage, as verify names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DamageKind {
    /// A frame's bytes do not match its CRC32C (or its sync marker is gone).
    Checksum,
    /// An intact frame or segment that does not follow the one before it: a record or
    /// segment was edited, dropped, inserted or moved.
    Chain,
    /// The segment ends inside a frame (or inside its header).
    Truncation,
    /// The segment header is not one (magic, checksum, format version).
    Header,
    /// A frame that checks out but whose payload this build cannot decode.
    Decode,
    /// The segment file could not be read.
    Unreadable,
}

impl DamageKind {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Checksum => "checksum mismatch",
            Self::Chain => "broken chain",
            Self::Truncation => "truncated",
            Self::Header => "bad segment header",
            Self::Decode => "undecodable record",
            Self::Unreadable => "unreadable segment",
        }
    }
}

/// What the chain expects next, carried from segment to segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The chain state; `None` when not known (the oldest segment's predecessor was retired,
    /// or damage came before): the next intact frame or header is taken as it is.
    pub state: Option<Hash>,
    pub previous_sequence: Option<u64>,
    /// The number the next record should have.
    pub next_number: u64,
}

impl Context {
    pub const UNKNOWN: Self = Self {
        state: None,
        previous_sequence: None,
        next_number: 1,
    };
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    /// The segment's header, intact.
    Header(Header),
    /// An intact frame at `offset`.
    Frame {
        offset: usize,
        head: FrameHead,
        payload: &'a [u8],
    },
    Damage {
        offset: usize,
        /// The frame's own number for a chain break; else the number expected there.
        number: u64,
        kind: DamageKind,
        /// Bytes from `offset` not read as records (0 for a chain break: the frame is
        /// intact and comes next).
        skipped: usize,
    },
}

/// The scan's position in one segment. It holds no bytes: each step is given the segment's
/// bytes, so that a reader can own both.
pub struct Scan {
    sequence: u64,
    offset: usize,
    context: Context,
    started: bool,
    /// A chain break was reported for this: it comes next.
    pending: Option<Pending>,
}

#[derive(Clone, Copy)]
enum Pending {
    Header(Header),
    Frame { offset: usize, head: FrameHead },
}

impl Scan {
    /// A scan of segment `sequence` (its file name's) from `context`.
    pub fn new(sequence: u64, context: Context) -> Self {
        Self {
            sequence,
            offset: 0,
            context,
            started: false,
            pending: None,
        }
    }

    /// Where the chain stands after what was scanned so far.
    pub fn context(&self) -> Context {
        self.context
    }

    /// The next step over `buf`, the segment's bytes (the same every call), `None` at its end.
    pub fn step<'a>(&mut self, buf: &'a [u8]) -> Option<Step<'a>> {
        if let Some(pending) = self.pending.take() {
            return Some(match pending {
                Pending::Header(header) => Step::Header(header),
                Pending::Frame { offset, head } => Step::Frame {
                    offset,
                    head,
                    payload: &buf[offset + FRAME_HEAD..offset + head.frame_len() - 4],
                },
            });
        }
        if !self.started {
            self.started = true;
            return Some(self.header(buf));
        }
        (self.offset < buf.len()).then(|| self.frame(buf))
    }

    fn damage<'a>(&mut self, offset: usize, kind: DamageKind, skipped: usize) -> Step<'a> {
        self.context.state = None;
        Step::Damage {
            offset,
            number: self.context.next_number,
            kind,
            skipped,
        }
    }

    fn header<'a>(&mut self, buf: &[u8]) -> Step<'a> {
        let previous_sequence = self.context.previous_sequence.replace(self.sequence);
        let header = match Header::parse(buf) {
            Ok(header) => header,
            Err(HeaderError::Short) => {
                self.offset = buf.len();
                return self.damage(0, DamageKind::Truncation, buf.len());
            }
            Err(HeaderError::Magic | HeaderError::Checksum | HeaderError::Version(_)) => {
                self.offset = HEADER_LEN;
                return self.damage(0, DamageKind::Header, HEADER_LEN);
            }
        };
        self.offset = HEADER_LEN;
        let c = self.context;
        let follows = header.sequence == self.sequence
            && match c.state {
                Some(state) => {
                    header.previous == state
                        && header.first_number == c.next_number
                        && previous_sequence.is_none_or(|p| p + 1 == header.sequence)
                }
                None => true,
            };
        self.context = Context {
            state: Some(header.chain_start()),
            previous_sequence: Some(header.sequence),
            next_number: header.first_number,
        };
        if follows {
            Step::Header(header)
        } else {
            self.pending = Some(Pending::Header(header));
            Step::Damage {
                offset: 0,
                number: header.first_number,
                kind: DamageKind::Chain,
                skipped: 0,
            }
        }
    }

    fn frame<'a>(&mut self, buf: &'a [u8]) -> Step<'a> {
        let offset = self.offset;
        let rest = &buf[offset..];
        let Some(head) = FrameHead::parse(rest) else {
            if rest.len() < FRAME_HEAD {
                self.offset = buf.len();
                return self.damage(offset, DamageKind::Truncation, rest.len());
            }
            let next = resync(buf, offset + 1);
            self.offset = next;
            return self.damage(offset, DamageKind::Checksum, next - offset);
        };
        let Some(frame) = rest.get(..head.frame_len()) else {
            self.offset = buf.len();
            return self.damage(offset, DamageKind::Truncation, rest.len());
        };
        self.offset = offset + frame.len();
        let payload = &frame[FRAME_HEAD..frame.len() - 4];
        if crc32c::crc32c(payload) != format::le32(&frame[frame.len() - 4..]) {
            return self.damage(offset, DamageKind::Checksum, frame.len());
        }
        let c = self.context;
        let follows = c.state.is_none_or(|state| {
            head.number == c.next_number
                && format::chain(&state, head.number, head.record_type, payload) == head.hash
        });
        self.context.state = Some(head.hash);
        self.context.next_number = head.number.saturating_add(1);
        if follows {
            Step::Frame {
                offset,
                head,
                payload,
            }
        } else {
            self.pending = Some(Pending::Frame { offset, head });
            Step::Damage {
                offset,
                number: head.number,
                kind: DamageKind::Chain,
                skipped: 0,
            }
        }
    }
}

/// Every step over one segment's bytes.
pub struct Steps<'a> {
    pub buf: &'a [u8],
    pub scan: Scan,
}

impl<'a> Iterator for Steps<'a> {
    type Item = Step<'a>;

    fn next(&mut self) -> Option<Step<'a>> {
        self.scan.step(self.buf)
    }
}

/// The offset of the next frame head at or after `from` that checks out, else the end.
fn resync(buf: &[u8], from: usize) -> usize {
    let mut at = from;
    while let Some(found) = buf
        .get(at..)
        .and_then(|rest| rest.windows(4).position(|w| w == format::MARKER))
    {
        let candidate = at + found;
        if FrameHead::parse(&buf[candidate..]).is_some() {
            return candidate;
        }
        at = candidate + 1;
    }
    buf.len()
}

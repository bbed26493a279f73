//! The message as the parser reads it, and one walk along a name in it, a wire byte a step.

use super::{DNS_WINDOW, HEADER_LEN, MAX_HOPS, MAX_NAME_WIRE, Malformed, WIDE, WINDOW_MASK};

/// A DNS message as copied: the first `len` bytes of `bytes`. `clipped` when the message was
/// longer than the window: then running out of bytes inside the answers ends the parse with
/// what was found, instead of being a truncation (compression points only backwards, so every
/// record wholly inside the window is complete).
pub struct Message<'a> {
    pub(super) bytes: &'a [u8; DNS_WINDOW],
    pub(super) len: usize,
    pub(super) clipped: bool,
}

impl<'a> Message<'a> {
    pub fn new(bytes: &'a [u8; DNS_WINDOW], len: usize, clipped: bool) -> Self {
        Self {
            bytes,
            len: if len > DNS_WINDOW { DNS_WINDOW } else { len },
            clipped: clipped || len > DNS_WINDOW,
        }
    }

    /// The byte at `at`, or [`Malformed::Truncated`] past the end.
    #[inline(always)]
    pub(super) fn byte(&self, at: usize) -> Result<u8, Malformed> {
        if at >= self.len {
            return Err(Malformed::Truncated);
        }
        Ok(self.bytes[at & WINDOW_MASK])
    }

    /// The `N` bytes at `at`, checked against the end once (every check is a branch the
    /// kernel's verifier follows both ways).
    #[inline(always)]
    pub(super) fn bytes_at<const N: usize>(&self, at: usize) -> Result<[u8; N], Malformed> {
        if at + N > self.len {
            return Err(Malformed::Truncated);
        }
        let mut out = [0u8; N];
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.bytes[(at + i) & WINDOW_MASK];
        }
        Ok(out)
    }

    #[inline(always)]
    pub(super) fn u16_at(&self, at: usize) -> Result<u16, Malformed> {
        Ok(u16::from_be_bytes(self.bytes_at::<2>(at)?))
    }
}

/// One step of a name walk.
pub(super) enum Step_ {
    /// The length byte of a label after the first: a dot in the spelling; compared as the
    /// length itself (which no label byte can be).
    Dot(u8),
    /// The next byte of the name as the event spells it: lower case, dotted.
    Byte(u8),
    /// A length byte of the first label, or a pointer followed: nothing to spell.
    Skip,
    /// The root's zero: the name is complete.
    End,
}

/// A walk along one name in the message, one wire byte per step.
#[derive(Clone, Copy)]
pub(super) struct NameCursor {
    pub(super) pos: usize,
    /// Where the labels being read began: a pointer must point strictly before it.
    pub(super) run_start: usize,
    /// Bytes left of the label being read.
    pub(super) in_label: usize,
    pub(super) hops: usize,
    /// Not 0 until the first label's length byte was read.
    pub(super) first: usize,
    pub(super) wire: usize,
    /// The position after the name where it sits (after its zero or its first pointer); 0
    /// until then.
    pub(super) end: usize,
}

impl NameCursor {
    /// A walk from `at`.
    #[inline(always)]
    pub(super) const fn new(at: usize) -> Self {
        Self {
            pos: at,
            run_start: at,
            in_label: 0,
            hops: 0,
            first: 1,
            wire: 0,
            end: 0,
        }
    }

    #[inline(always)]
    pub(super) fn step(&mut self, m: &Message<'_>) -> Result<Step_, Malformed> {
        let b = m.byte(self.pos)?;
        if self.in_label > 0 {
            self.pos = (self.pos + 1) & WIDE;
            self.in_label = (self.in_label - 1) & WIDE;
            // Printable ASCII without the dot, which would split a label in two.
            if !(0x21..=0x7e).contains(&b) || b == b'.' {
                return Err(Malformed::BadName);
            }
            return Ok(Step_::Byte(b.to_ascii_lowercase()));
        }
        match b & 0xc0 {
            0 if b == 0 => {
                if self.end == 0 {
                    self.end = (self.pos + 1) & WIDE;
                }
                Ok(Step_::End)
            }
            0 => {
                self.wire = (self.wire + 1 + usize::from(b)) & WIDE;
                // The label, and at least the root's zero after it.
                if self.wire + 1 > usize::from(MAX_NAME_WIRE) {
                    return Err(Malformed::BadName);
                }
                self.in_label = usize::from(b);
                self.pos = (self.pos + 1) & WIDE;
                if self.first != 0 {
                    self.first = 0;
                    Ok(Step_::Skip)
                } else {
                    Ok(Step_::Dot(b))
                }
            }
            0xc0 => {
                let target = usize::from(b & 0x3f) << 8 | usize::from(m.byte(self.pos + 1)?);
                self.hops = (self.hops + 1) & WIDE;
                if target >= self.run_start
                    || target < HEADER_LEN
                    || self.hops > usize::from(MAX_HOPS)
                {
                    return Err(Malformed::BadPointer);
                }
                if self.end == 0 {
                    self.end = (self.pos + 2) & WIDE;
                }
                self.pos = target & WIDE;
                self.run_start = target & WIDE;
                Ok(Step_::Skip)
            }
            // 0x40 and 0x80: extended and reserved label types (RFC 6891 §5).
            _ => Err(Malformed::BadName),
        }
    }
}

#[inline(always)]
pub(super) fn spelt(step: Step_) -> Option<u8> {
    match step {
        Step_::Byte(b) | Step_::Dot(b) => Some(b),
        Step_::Skip => None,
        Step_::End => Some(0),
    }
}

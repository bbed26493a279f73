//! The bytes on disk. A journal is a directory of segment files `NNNNNNNNNNNNNNNN.journal`
//! (the segment's sequence number, 16 decimal digits, so names sort in order), each a
//! header and then frames, appended and never rewritten. Integers are little-endian.
//!
//! Segment header, [`HEADER_LEN`] bytes:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `EXFILJNL` |
//! | 8 | 2 | format version ([`FORMAT_VERSION`]) |
//! | 10 | 2 | reserved, 0 |
//! | 12 | 8 | sequence number (= the file name's) |
//! | 20 | 8 | creation time, Unix ms |
//! | 28 | 8 | number of the segment's first record (records are numbered across the journal from 1) |
//! | 36 | 32 | the previous segment's final chain hash (zeros for the first segment ever) |
//! | 68 | 4 | CRC32C of bytes 0..68 |
//!
//! Frame, [`FRAME_HEAD`] + payload + 4 bytes:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | sync marker [`MARKER`]: after damage, a reader scans for it |
//! | 4 | 4 | payload length |
//! | 8 | 1 | record type (Start 1, Config 2, Interval 3, Process 4, Alert 5, Stop 6, Totals 7, Resume 8; an older build reads 7 and 8 as undecodable, and so 0.6 reads 0.7's interval and alert records that carry destination names, a trailing part; a newer one reads every older journal) |
//! | 9 | 3 | reserved, 0 |
//! | 12 | 8 | record number |
//! | 20 | 32 | chain hash after this record |
//! | 52 | 4 | CRC32C of bytes 0..52 (the head: a length is trusted only once this matches) |
//! | 56 | n | payload: encoding version byte, postcard body |
//! | 56+n | 4 | CRC32C of the payload |
//!
//! The chain: a segment's start state is BLAKE3(`exfil-sensor journal segment` ‖ header
//! bytes 0..68), which binds its predecessor's final hash; each record's hash is
//! BLAKE3(previous state ‖ number ‖ type ‖ payload). Every frame carries its hash, so a
//! reader that skipped damage picks the chain up again at the next intact frame; editing,
//! dropping or reordering records, or segments, breaks it. Two CRCs, so that a damaged
//! length is told from a truncated file: a head that checks out and runs past the end of
//! the file is a truncation, anything else a checksum error.

use std::path::{Path, PathBuf};

pub const MAGIC: [u8; 8] = *b"EXFILJNL";
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 72;
/// Four bytes never found in UTF-8 text (0xE7 starts a three-byte sequence, and `J` is no
/// continuation byte), though a varint may hold them: a match is only a candidate until
/// the head's CRC agrees.
pub const MARKER: [u8; 4] = [0xE7, b'J', b'R', b'N'];
pub const FRAME_HEAD: usize = 56;
/// Bytes a frame adds to its payload.
pub const FRAME_OVERHEAD: usize = FRAME_HEAD + 4;
/// The longest payload a reader accepts: beyond it the length is taken as damage. An
/// interval of 10,000,000 file rows with paths would not fit; flows.max_files caps real ones
/// far below.
pub const MAX_PAYLOAD: u32 = 1 << 30;
pub const EXTENSION: &str = "journal";

pub type Hash = [u8; 32];

/// A segment's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub sequence: u64,
    pub created_ms: u64,
    pub first_number: u64,
    pub previous: Hash,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes.
    Short,
    Magic,
    Version(u16),
    Checksum,
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..20].copy_from_slice(&self.sequence.to_le_bytes());
        b[20..28].copy_from_slice(&self.created_ms.to_le_bytes());
        b[28..36].copy_from_slice(&self.first_number.to_le_bytes());
        b[36..68].copy_from_slice(&self.previous);
        let crc = crc32c::crc32c(&b[..68]);
        b[68..72].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, HeaderError> {
        let b = bytes.get(..HEADER_LEN).ok_or(HeaderError::Short)?;
        if b[0..8] != MAGIC {
            return Err(HeaderError::Magic);
        }
        if crc32c::crc32c(&b[..68]) != le32(&b[68..72]) {
            return Err(HeaderError::Checksum);
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        Ok(Self {
            sequence: le64(&b[12..20]),
            created_ms: le64(&b[20..28]),
            first_number: le64(&b[28..36]),
            previous: hash_at(&b[36..68]),
        })
    }

    /// The chain state a segment starts from.
    pub fn chain_start(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(b"exfil-sensor journal segment");
        h.update(&self.to_bytes()[..68]);
        *h.finalize().as_bytes()
    }
}

/// A frame's head, once its CRC matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub length: u32,
    pub record_type: u8,
    pub number: u64,
    pub hash: Hash,
}

impl FrameHead {
    /// The head at the start of `bytes`: `None` unless the marker and CRC match and the
    /// length is sane.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..FRAME_HEAD)?;
        if b[0..4] != MARKER || crc32c::crc32c(&b[..52]) != le32(&b[52..56]) {
            return None;
        }
        let length = le32(&b[4..8]);
        (length <= MAX_PAYLOAD).then(|| Self {
            length,
            record_type: b[8],
            number: le64(&b[12..20]),
            hash: hash_at(&b[20..52]),
        })
    }

    /// The whole frame's length.
    pub fn frame_len(&self) -> usize {
        FRAME_OVERHEAD + self.length as usize
    }
}

/// The chain hash of a record after `previous`.
pub fn chain(previous: &Hash, number: u64, record_type: u8, payload: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(previous);
    h.update(&number.to_le_bytes());
    h.update(&[record_type]);
    h.update(payload);
    *h.finalize().as_bytes()
}

/// Appends one whole frame to `out`. The payload must be at most [`MAX_PAYLOAD`] bytes
/// (the writer checks).
pub fn write_frame(out: &mut Vec<u8>, record_type: u8, number: u64, hash: &Hash, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&MARKER);
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&[record_type, 0, 0, 0]);
    out.extend_from_slice(&number.to_le_bytes());
    out.extend_from_slice(hash);
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
}

/// The file name of segment `sequence`.
pub fn segment_name(sequence: u64) -> String {
    format!("{sequence:016}.{EXTENSION}")
}

/// The sequence number a segment file's name says, `None` for any other file.
pub fn segment_sequence(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(".journal")?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files of `dir`, oldest first.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(sequence) = segment_sequence(&path) {
            segments.push((sequence, path));
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

pub(crate) fn le32(b: &[u8]) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn hash_at(b: &[u8]) -> Hash {
    let mut h = [0; 32];
    h.copy_from_slice(&b[..32]);
    h
}

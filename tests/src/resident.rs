//! [`Resident`]: a file held in the page cache (mapped and locked by this process) while a
//! test's helper reads it, so that a byte check of that read does not depend on memory
//! reclaim.
//!
//! Why: the test VM runs a DAMON `pageout` scheme (`/sys/kernel/mm/damon/admin`) that evicts
//! unmapped page cache within seconds of its last use (7 % of a just-written 29 MB file
//! within 10 s, half of it within 70 s). A buffered read of a partly evicted file meets
//! folios still being read back from disk, and when such a folio ends a batch,
//! `filemap_get_pages` (mm/filemap.c) drops it and returns the folios before it without
//! firing `mm_filemap_get_pages`: they are copied to the reader uncounted. Seen by hand with
//! bpftrace on the tracepoint: `socat` reading 29 MB files left 40 s to reclaim missed the
//! tracepoint for 1 to 20 pages of 7,267 in 9 reads of 12 (8 of 8 files with 57–78 % of their
//! pages still cached, 1 of 4 with 89–95 %); for none in 8 reads of such files read back
//! whole first. A locked mapping keeps every page resident and up to date, so the reader's
//! batches never take that path. The reader, its reads and its bytes are the same.

use std::{os::fd::AsRawFd as _, path::Path};

use anyhow::{Context as _, bail};

/// The whole of a file mapped read-only and locked in memory; unmapped on drop.
pub struct Resident {
    addr: *mut libc::c_void,
    len: usize,
}

impl Resident {
    /// Maps `path` and locks it (reading back any page already evicted).
    pub fn lock(path: &Path) -> anyhow::Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = usize::try_from(file.metadata()?.len())?;
        if len == 0 {
            bail!("{} is empty: nothing to hold", path.display());
        }
        // SAFETY: a new read-only shared mapping of an open file; the kernel picks the
        // address, and the mapping outlives the descriptor on its own.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            bail!(
                "mmap {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        let resident = Self { addr, len };
        // SAFETY: the mapping just made, whole.
        if unsafe { libc::mlock(addr, len) } != 0 {
            bail!(
                "mlock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(resident)
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        // SAFETY: the mapping `lock` made, unmapped once (munmap unlocks it).
        unsafe {
            libc::munmap(self.addr, self.len);
        }
    }
}

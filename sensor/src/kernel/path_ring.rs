//! The file path ring, drained as it fills rather than once a poll.
//!
//! The programs send a file's path once, on its first read or write. Drained only at each
//! poll, the 1 MiB ring held about 1,000 paths (1,048-byte events) per poll: `tar` or
//! Dovecot's `imap` reading a mail store opens thousands of new files a second, and the paths
//! past the first thousand were dropped, their files' bytes counted as class `other` for good.
//! A thread of its own now wakes on the ring's readiness (the kernel's ring buffer wakes a
//! poller when a record is submitted to a ring the consumer had emptied,
//! `kernel/bpf/ringbuf.c: bpf_ringbuf_commit`), turns each event into the caller's compact
//! form (a few dozen bytes instead of 1,048) and keeps it until the poll takes it.
//!
//! The poll's ordering guarantee holds: [`PathRing::take`] drains the ring once more, under
//! the same lock, after the poll has read the maps, so every file in that read has its path
//! in what it takes.

use std::{
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use sensor_common::FilePathEvent;

/// After each drain the thread waits this long before it waits on the ring again: one wake-up
/// (one `irq_work` in a program's submit) per period at most, however fast files are opened.
/// The 4 MiB ring holds 4,000 events: two milliseconds of waiting use a twentieth of it at
/// 100,000 new files a second, which leaves room for a thread that the scheduler runs late.
const BATCH: Duration = Duration::from_millis(2);

/// How long one wait on the ring lasts, so that the thread sees [`PathRing`] dropped.
const WAIT_MS: i32 = 100;

/// Paths kept between two polls by the thread: 262,144 new files in one poll, four times what
/// the kernel's `PATH_SENT` remembers; a kept path is a few dozen bytes plus its names (about
/// 130 bytes for a maildir message's path: 34 MiB at most, held only through such a burst).
/// Past this (a poll that stalls), the thread leaves events in the ring; when the ring fills,
/// the programs count the drops (`file_paths`) and send those paths again at the file's next
/// read or write.
pub const MAX_BUFFERED: usize = 262_144;

struct Drained<T> {
    ring: RingBuf<MapData>,
    paths: Vec<T>,
    convert: fn(&FilePathEvent) -> T,
}

impl<T> Drained<T> {
    /// Moves the ring's records into `paths`, up to `limit` of them held.
    fn drain(&mut self, limit: usize) {
        while self.paths.len() < limit {
            let Some(item) = self.ring.next() else {
                return;
            };
            if item.len() >= std::mem::size_of::<FilePathEvent>() {
                // SAFETY: FilePathEvent is plain old data (aya::Pod) and the length was
                // checked; the read does not assume alignment.
                let event =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FilePathEvent>()) };
                self.paths.push((self.convert)(&event));
            }
        }
    }
}

/// The `FILE_PATHS` ring and the thread that drains it.
pub struct PathRing<T: Send + 'static> {
    shared: Arc<Mutex<Drained<T>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> PathRing<T> {
    /// Starts the thread that drains `ring`, keeping each event as `convert` makes it.
    pub fn start(
        ring: RingBuf<MapData>,
        convert: fn(&FilePathEvent) -> T,
    ) -> std::io::Result<Self> {
        let fd = ring.as_raw_fd();
        let shared = Arc::new(Mutex::new(Drained {
            ring,
            paths: Vec::new(),
            convert,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let shared = Arc::clone(&shared);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("paths".into())
                .spawn(move || {
                    let mut was_full = false;
                    while !stop.load(Ordering::Relaxed) {
                        let mut ready = libc::pollfd {
                            fd,
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd; the fd lives as long as `shared`.
                        let n = unsafe { libc::poll(&raw mut ready, 1, WAIT_MS) };
                        if n <= 0 {
                            continue; // timed out (or a signal): look at `stop` again
                        }
                        let full = {
                            let mut drained = lock(&shared);
                            drained.drain(MAX_BUFFERED);
                            drained.paths.len() >= MAX_BUFFERED
                        };
                        if full && !was_full {
                            tracing::warn!(
                                paths = MAX_BUFFERED,
                                "file paths wait for a late poll; the ring fills meanwhile"
                            );
                        }
                        was_full = full;
                        // Full: the ring stays readable; wait for the poll to take the paths
                        // rather than spin on it.
                        std::thread::sleep(if full { BATCH * 20 } else { BATCH });
                    }
                })?
        };
        Ok(Self {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Every path the kernel sent since the last call: what the thread kept, then whatever
    /// is in the ring now, all of it.
    pub fn take(&self) -> Vec<T> {
        let mut drained = lock(&self.shared);
        drained.drain(usize::MAX);
        std::mem::take(&mut drained.paths)
    }
}

impl<T: Send + 'static> Drop for PathRing<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The lock, whether or not a thread panicked holding it: the buffer is a plain list.
fn lock<T>(shared: &Mutex<Drained<T>>) -> MutexGuard<'_, Drained<T>> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

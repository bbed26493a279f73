//! The JSON lines sink: one line per raised and per resolved alert, each the
//! [`AlertEvent`] as one JSON object, appended to a file that log shippers and `jq` read.
//!
//! A thread of its own writes, so a slow disk never stalls the runtime. Each line is one
//! `write` on an `O_APPEND` descriptor, unbuffered: what `send` accepted is in the file as soon
//! as the queue drains. When the path stops naming the open file (logrotate renamed or
//! deleted it) the next line goes to a new file at the path.

use std::{
    fs::{DirBuilder, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::sync::mpsc;

use super::{Backlog, Metrics, SinkError, Trouble};
use crate::api::AlertEvent;

pub(super) const SINK: &str = "json_lines";
/// Lines waiting for the disk; a local file drains this in microseconds unless it is failing.
pub(super) const QUEUE: usize = 1000;

/// Starts the writer thread; it ends when every sender is gone.
pub(super) fn start(
    mut file: AlertFile,
    mut rx: mpsc::UnboundedReceiver<Arc<AlertEvent>>,
    backlog: Arc<Backlog>,
    metrics: Metrics,
) -> Result<(), SinkError> {
    std::thread::Builder::new()
        .name("alert-json-lines".to_owned())
        .spawn(move || {
            let mut trouble = Trouble::new(SINK);
            while let Some(event) = rx.blocking_recv() {
                match file.append(&event) {
                    Ok(()) => {
                        metrics.sent.inc();
                        trouble.recovered();
                    }
                    Err(cause) => {
                        metrics.failures.inc();
                        metrics.dropped.inc();
                        trouble.failed(format_args!(
                            "writing alert {} to {}: {cause}",
                            event.alert.id,
                            file.path.display()
                        ));
                    }
                }
                backlog.release(1);
            }
        })
        .map_err(SinkError::Thread)?;
    Ok(())
}

pub(super) struct AlertFile {
    path: PathBuf,
    /// `None` after an open failed; the next line tries again.
    file: Option<File>,
    /// Device and inode of `file`, to notice rotation.
    identity: (u64, u64),
}

impl AlertFile {
    /// Opens (creating) the file, as `reopen` does.
    pub(super) fn open(path: &Path) -> Result<Self, SinkError> {
        let mut alerts = Self {
            path: path.to_path_buf(),
            file: None,
            identity: (0, 0),
        };
        alerts.reopen().map_err(|cause| SinkError::JsonLines {
            path: path.to_path_buf(),
            cause,
        })?;
        Ok(alerts)
    }

    /// Opens the path for appending: created mode 0600 (who sent what where is not for every
    /// local user), its directory 0700 when missing. An existing file keeps its mode — an
    /// admin may have opened it to a log shipper's group.
    fn reopen(&mut self) -> io::Result<()> {
        self.file = None;
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        let meta = file.metadata()?;
        self.identity = (meta.dev(), meta.ino());
        self.file = Some(file);
        Ok(())
    }

    fn append(&mut self, event: &AlertEvent) -> io::Result<()> {
        let mut line = serde_json::to_vec(event)?;
        line.push(b'\n');
        let rotated = std::fs::metadata(&self.path)
            .map_or(true, |meta| (meta.dev(), meta.ino()) != self.identity);
        if rotated || self.file.is_none() {
            self.reopen()?;
        }
        match &mut self.file {
            Some(file) => file.write_all(&line),
            None => Err(io::Error::other("the file is not open")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, time::Duration};

    use prometheus::Registry;

    use super::*;
    use crate::{
        api::AlertChange,
        sinks::{
            Sinks, SinksConfig,
            testing::{TempDir, event, metric},
        },
    };

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    fn lines(path: &Path) -> Vec<AlertEvent> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str(l).expect("one event per line"))
            .collect()
    }

    #[tokio::test]
    async fn raised_and_resolved_are_written_updated_is_not() {
        let dir = TempDir::new("jsonl");
        let path = dir.path().join("log/exfil-sensor/alerts.jsonl");
        let config = SinksConfig {
            json_lines: Some(path.clone()),
            ..SinksConfig::default()
        };
        let registry = Registry::new();
        let sinks = Sinks::start(&config, &registry, "host").expect("starts");
        let raised = event(AlertChange::Raised);
        let updated = event(AlertChange::Updated);
        let resolved = event(AlertChange::Resolved);
        for e in [&raised, &updated, &resolved] {
            sinks.send(e);
        }
        sinks.flush(Duration::from_secs(5)).await;
        assert_eq!(lines(&path), [raised.clone(), resolved.clone()]);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.starts_with("{\"change\":\"raised\",\"alert\":{\"id\":7,\"kind\":\"burst\","),
            "{text}"
        );
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("log")), 0o700);
        assert_eq!(mode(&dir.path().join("log/exfil-sensor")), 0o700);
        assert_eq!(metric(&registry, "sent", SINK), 2.0);
        assert_eq!(metric(&registry, "failures", SINK), 0.0);
        assert_eq!(metric(&registry, "dropped", SINK), 0.0);
        assert_eq!(metric(&registry, "queue_length", SINK), 0.0);

        // Rotated away (logrotate's rename): the next line starts a new file at the path.
        let old = dir.path().join("alerts.jsonl.1");
        std::fs::rename(&path, &old).expect("rotate");
        sinks.send(&raised);
        sinks.flush(Duration::from_secs(5)).await;
        assert_eq!(lines(&old), [raised.clone(), resolved]);
        assert_eq!(lines(&path), [raised]);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(metric(&registry, "sent", SINK), 3.0);
    }

    #[tokio::test]
    async fn an_existing_file_is_appended_to() {
        let dir = TempDir::new("jsonl-append");
        let path = dir.file("alerts.jsonl", "", 0o640);
        let raised = event(AlertChange::Raised);
        std::fs::write(
            &path,
            format!("{}\n", serde_json::to_string(&raised).expect("json")),
        )
        .expect("write");
        let config = SinksConfig {
            json_lines: Some(path.clone()),
            ..SinksConfig::default()
        };
        let sinks = Sinks::start(&config, &Registry::new(), "host").expect("starts");
        sinks.send(&raised);
        sinks.flush(Duration::from_secs(5)).await;
        assert_eq!(lines(&path), [raised.clone(), raised]);
        assert_eq!(mode(&path), 0o640, "an admin's mode is kept");
    }

    #[tokio::test]
    async fn a_write_error_is_counted_not_fatal() {
        let dir = TempDir::new("jsonl-error");
        let path = dir.path().join("alerts.jsonl");
        let config = SinksConfig {
            json_lines: Some(path.clone()),
            ..SinksConfig::default()
        };
        let registry = Registry::new();
        let sinks = Sinks::start(&config, &registry, "host").expect("starts");
        // A directory where the file was: reopening fails.
        std::fs::remove_file(&path).expect("rm");
        std::fs::create_dir(&path).expect("mkdir");
        sinks.send(&event(AlertChange::Raised));
        sinks.flush(Duration::from_secs(5)).await;
        assert_eq!(metric(&registry, "sent", SINK), 0.0);
        assert_eq!(metric(&registry, "failures", SINK), 1.0);
        assert_eq!(metric(&registry, "dropped", SINK), 1.0);
        // Fixed: the next line is written.
        std::fs::remove_dir(&path).expect("rmdir");
        sinks.send(&event(AlertChange::Resolved));
        sinks.flush(Duration::from_secs(5)).await;
        assert_eq!(lines(&path), [event(AlertChange::Resolved)]);
        assert_eq!(metric(&registry, "sent", SINK), 1.0);
    }

    #[test]
    fn an_unopenable_file_is_an_error_naming_it() {
        let dir = TempDir::new("jsonl-bad");
        let blocker = dir.file("blocker", "", 0o600);
        let path = blocker.join("alerts.jsonl");
        let err = AlertFile::open(&path).err().map(|e| e.to_string());
        assert_eq!(
            err,
            Some(format!(
                "alerts.json_lines {}: Not a directory (os error 20)",
                path.display()
            ))
        );
    }
}

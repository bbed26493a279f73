//! The journal's modes, checked at start: its directory 0700 and its files 0600, as the
//! writer makes them. A journal names every service, destination and (unless
//! `journal.redact_paths` or `files.hash_paths`) file path the host touched: a looser mode
//! lets local users read that. The check warns and leaves the modes as they are — the
//! operator may have loosened them for a backup or a log shipper on purpose, and an agent
//! that silently changed them would hide that (Prometheus's promtool and exporter-toolkit
//! warn about a readable web config the same way rather than fix it).

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

/// A path of the journal whose mode lets its group or others in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoosePath {
    pub path: PathBuf,
    /// The mode found (permission bits).
    pub mode: u32,
    /// The mode the writer gives it.
    pub wanted: u32,
}

/// The journal directory (wanted 0700) and each file in it (wanted 0600) whose mode gives its
/// group or others any access. A directory that does not exist yet has none.
pub fn loose_paths(dir: &Path) -> Vec<LoosePath> {
    let mut loose = Vec::new();
    let mut check = |path: &Path, wanted: u32| {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                loose.push(LoosePath {
                    path: path.to_path_buf(),
                    mode,
                    wanted,
                });
            }
        }
    };
    check(dir, 0o700);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return loose;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    files.sort();
    for file in files {
        check(&file, 0o600);
    }
    loose
}

/// `exfil_sensor_journal_loose_permissions`, registered in `registry`.
pub fn register_metric(registry: &prometheus::Registry) -> prometheus::IntGauge {
    let gauge = prometheus::IntGauge::new(
        "exfil_sensor_journal_loose_permissions",
        "Paths of the journal (its directory, its files) whose mode let other users in at start: looser than 0700 and 0600 (each named in a warning; left as found).",
    )
    .expect("static metric definition");
    registry
        .register(Box::new(gauge.clone()))
        .expect("each metric is registered once, with a static definition");
    gauge
}

/// Logs one warning per loose path; returns how many there were (the metric).
pub fn warn_loose(dir: &Path) -> usize {
    let loose = loose_paths(dir);
    for p in &loose {
        tracing::warn!(
            "journal {}: mode {:04o} lets other users read it (the agent makes it {:04o}); left as it is: chmod {:o} {} if that was not meant",
            p.path.display(),
            p.mode,
            p.wanted,
            p.wanted,
            p.path.display()
        );
    }
    loose.len()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::DirBuilderExt as _;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_loosened_directory_and_file_are_named_with_their_modes() {
        let root = std::env::temp_dir().join(format!("exfil-journal-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("journal");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .expect("mkdir");
        chmod(&dir, 0o700);
        let segment = dir.join("0000000000000001.journal");
        let lock = dir.join("lock");
        std::fs::write(&segment, b"x").expect("write");
        std::fs::write(&lock, b"").expect("write");
        chmod(&segment, 0o600);
        chmod(&lock, 0o600);
        assert_eq!(loose_paths(&dir), Vec::new());

        chmod(&dir, 0o755);
        chmod(&segment, 0o640);
        assert_eq!(
            loose_paths(&dir),
            vec![
                LoosePath {
                    path: dir.clone(),
                    mode: 0o755,
                    wanted: 0o700
                },
                LoosePath {
                    path: segment.clone(),
                    mode: 0o640,
                    wanted: 0o600
                },
            ]
        );
        assert_eq!(warn_loose(&dir), 2);
        // Named, not changed.
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!((mode(&dir), mode(&segment)), (0o755, 0o640));
        assert_eq!(loose_paths(&root.join("missing")), Vec::new());
        let _ = std::fs::remove_dir_all(&root);
    }
}

//! `files.hash_paths`: file paths shown as a keyed hash, so that the journal and the files
//! API let a responder match one file across records and hosts' reports without naming it.
//!
//! BLAKE3 in keyed mode (a PRF: without the key, a guessed path cannot be checked against a
//! hash), truncated to 128 bits, written `hash:<32 hex digits>`. The key is 32 random bytes in
//! a file only its owner may read, made on first use.

use std::{
    io::{Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
#[error("files.hash_key_file {}: {reason}", path.display())]
pub struct HashKeyError {
    path: PathBuf,
    reason: String,
}

/// The keyed hash of paths.
#[derive(Clone)]
pub struct PathHasher {
    key: [u8; 32],
}

impl std::fmt::Debug for PathHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PathHasher(..)")
    }
}

impl PathHasher {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// Reads the key file, or makes it (32 bytes from the kernel's random source, mode 0600,
    /// its directory created 0700 when missing). A file others may read, or not 32 bytes
    /// long, is refused: the hash is only as private as its key.
    pub fn load_or_create(path: &Path) -> Result<Self, HashKeyError> {
        let bad = |reason: String| HashKeyError {
            path: path.to_path_buf(),
            reason,
        };
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o7777;
                if mode & 0o077 != 0 {
                    return Err(bad(format!(
                        "mode {mode:04o} lets others read it; chmod 0600"
                    )));
                }
                let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
                let key: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad(format!("{} bytes; a key is 32 bytes", bytes.len())))?;
                Ok(Self::new(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut random| random.read_exact(&mut key))
                    .map_err(|e| bad(format!("reading /dev/urandom: {e}")))?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(|e| bad(e.to_string()))?;
                }
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .and_then(|mut file| {
                        file.write_all(&key)?;
                        file.sync_all()
                    })
                    .map_err(|e| bad(e.to_string()))?;
                Ok(Self::new(key))
            }
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// `hash:<hex>` of `path`.
    pub fn hash(&self, path: &str) -> String {
        let hash = blake3::keyed_hash(&self.key, path.as_bytes());
        let mut shown = String::with_capacity(5 + 32);
        shown.push_str("hash:");
        for byte in &hash.as_bytes()[..16] {
            shown.push_str(&format!("{byte:02x}"));
        }
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_keyed_stable_and_hides_the_path() {
        let a = PathHasher::new([1; 32]);
        let b = PathHasher::new([2; 32]);
        let path = "/var/lib/postgresql/16/main/base/1/1259";
        assert_eq!(a.hash(path), a.hash(path));
        assert_ne!(a.hash(path), b.hash(path));
        assert_ne!(
            a.hash(path),
            a.hash("/var/lib/postgresql/16/main/base/1/1260")
        );
        let shown = a.hash(path);
        assert_eq!(shown.len(), 5 + 32);
        assert!(shown.starts_with("hash:"));
        assert!(!shown.contains("postgresql"));
    }

    #[test]
    fn the_key_file_is_made_private_once_and_refused_when_readable() {
        let dir = std::env::temp_dir().join(format!("exfil-hash-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("state").join("path-hash.key");
        let first = PathHasher::load_or_create(&path).expect("made");
        let meta = std::fs::metadata(&path).expect("exists");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(meta.len(), 32);
        let again = PathHasher::load_or_create(&path).expect("read");
        assert_eq!(first.hash("/etc/shadow"), again.hash("/etc/shadow"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = PathHasher::load_or_create(&path).expect_err("refused");
        assert_eq!(
            err.to_string(),
            format!(
                "files.hash_key_file {}: mode 0644 lets others read it; chmod 0600",
                path.display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

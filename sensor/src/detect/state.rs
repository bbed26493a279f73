//! The detection state file: JSON (so that an admin can read what was learnt), written to a
//! temporary file, synced and renamed over the old one, mode 0600.

use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Serialize, de::DeserializeOwned};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("detection state {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("detection state {path}: {cause}")]
    Encode {
        path: String,
        cause: serde_json::Error,
    },
}

/// The version written with the state; a file of another version is set aside.
const VERSION: u32 = 1;

#[derive(Serialize)]
struct Written<'a, T> {
    version: u32,
    state: &'a T,
}

#[derive(serde::Deserialize)]
struct Stored<T> {
    version: u32,
    state: T,
}

pub enum Read<T> {
    Missing,
    /// The state, and the file's text (what the journal's start record keeps).
    Loaded(Box<T>, String),
    /// It could not be used and was renamed to `moved_to`.
    SetAside {
        moved_to: PathBuf,
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |cause| StateError::Io {
        path: path.display().to_string(),
        cause,
    }
}

pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Read<T>, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read::Missing),
        Err(e) => return Err(io(path)(e)),
    };
    let reason = match parse::<T>(&text) {
        Ok(state) => return Ok(Read::Loaded(Box::new(state), text)),
        Err(reason) => reason,
    };
    let mut moved_to = path.as_os_str().to_owned();
    moved_to.push(".bad");
    let moved_to = PathBuf::from(moved_to);
    fs::rename(path, &moved_to).map_err(io(path))?;
    Ok(Read::SetAside { moved_to, reason })
}

/// A state file's text (as the journal's start record keeps it); why not, when it is not one.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    match serde_json::from_str::<Stored<T>>(text) {
        Ok(stored) if stored.version == VERSION => Ok(stored.state),
        Ok(stored) => Err(format!(
            "version {} (this agent writes {VERSION})",
            stored.version
        )),
        Err(e) => Err(e.to_string()),
    }
}

pub fn write<T: Serialize>(path: &Path, state: &T) -> Result<(), StateError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let text = serde_json::to_vec(&Written {
        version: VERSION,
        state,
    })
    .map_err(|cause| StateError::Encode {
        path: path.display().to_string(),
        cause,
    })?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io(&temporary))?;
    file.write_all(&text).map_err(io(&temporary))?;
    file.sync_all().map_err(io(&temporary))?;
    fs::rename(&temporary, path).map_err(io(path))
}

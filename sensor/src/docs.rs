//! ARCHITECTURE.md held to the code: every source path it names exists, and it names every
//! kernel map the programs write. A path renamed or a map added without the document fails here.

use std::path::{Path, PathBuf};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the sensor crate sits in the workspace")
        .to_path_buf()
}

fn read(name: &str) -> String {
    let path = repository().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---- ARCHITECTURE.md -----------------------------------------------------------------------

/// Every file of the workspace's crates, relative to the repository (build output left out).
fn source_files() -> Vec<String> {
    fn walk(dir: &Path, root: &Path, files: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("a source directory") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                if !path.ends_with("target") {
                    walk(&path, root, files);
                }
            } else if let Ok(relative) = path.strip_prefix(root) {
                files.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    let root = repository();
    let mut files = Vec::new();
    for crate_dir in [
        "sensor",
        "sensor-ebpf",
        "sensor-common",
        "xtask",
        "tests",
        "fuzz",
    ] {
        walk(&root.join(crate_dir), &root, &mut files);
    }
    files
}

#[test]
fn the_paths_and_maps_architecture_names_exist() {
    let text = read("ARCHITECTURE.md");
    let files = source_files();
    // `sensor/src/kernel/`, `flow/identity.rs`, `net_send.rs`, `report/`: each a file or
    // directory of one of the crates, named from the repository or from a crate's `src/`.
    let mut checked = 0;
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || "_/.-".contains(c))) {
        let word = word.trim_end_matches('.');
        let is_file = word.ends_with(".rs");
        let is_dir = word.ends_with('/') && word.len() > 1 && !word.starts_with('/');
        if !(is_file || is_dir) || word.contains("..") {
            continue;
        }
        checked += 1;
        let found = files.iter().any(|f| {
            let within = |name: &str| {
                f == name
                    || f.ends_with(&format!("/{name}"))
                    || (name.ends_with('/')
                        && (f.starts_with(name) || f.contains(&format!("/{name}"))))
            };
            within(word)
        });
        assert!(found, "ARCHITECTURE.md names `{word}`, which no crate has");
    }
    assert!(
        checked > 20,
        "too few paths found in ARCHITECTURE.md: {checked}"
    );
    for map in crate::kernel::pinned_maps() {
        assert!(
            text.contains(map),
            "ARCHITECTURE.md does not name the kernel map {map}"
        );
    }
}

//! The README's reference sections and ARCHITECTURE.md, held to the code: every config key the
//! parser accepts has a row (and the default it shows is the embedded default's), every metric
//! the agent registers has a row with its type and labels, every alert kind, fleet alert and
//! probe has its entry, and every source path and kernel map ARCHITECTURE.md relies on exists.
//! A key, metric, kind or probe added without its documentation fails here, and so does a row
//! left behind by one that was removed or renamed.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use crate::{
    config::{Config, DEFAULT_TOML},
    detect::Kind,
};

mod metrics;

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

/// The text under `## {heading}`, up to the next `## ` heading.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("the README has no section `## {heading}`"))
        + 1;
    let body = &text[start..];
    let end = body[3..].find("\n## ").map_or(body.len(), |i| i + 4);
    &body[..end]
}

/// The cells of each table row (`| a | b |`) of `text`, header and rule rows left out.
fn rows(text: &str) -> Vec<Vec<&str>> {
    let mut rows = Vec::new();
    let mut header = true;
    for line in text.lines() {
        let Some(inner) = line
            .trim()
            .strip_prefix('|')
            .and_then(|l| l.strip_suffix('|'))
        else {
            header = true;
            continue;
        };
        let cells = cells(inner);
        if header {
            // The first row of a table is its header; the second its `|---|` rule.
            header = false;
            continue;
        }
        if cells
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
        {
            continue;
        }
        rows.push(cells);
    }
    rows
}

/// A row's cells: split at each `|` not escaped with a backslash (one inside a code span is).
fn cells(row: &str) -> Vec<&str> {
    let mut cells = Vec::new();
    let mut start = 0;
    let bytes = row.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'|' && (i == 0 || bytes[i - 1] != b'\\') {
            cells.push(row[start..i].trim());
            start = i + 1;
        }
    }
    cells.push(row[start..].trim());
    cells
}

/// The rows whose first cell is one code span, by its text.
fn rows_by_code(text: &str) -> BTreeMap<&str, Vec<&str>> {
    rows(text)
        .into_iter()
        .filter_map(|cells| {
            let first = cells.first()?;
            let code = first.strip_prefix('`')?.strip_suffix('`')?;
            (!code.contains('`')).then_some((code, cells))
        })
        .collect()
}

/// The names between backticks in `text`.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

// ---- Configuration -------------------------------------------------------------------------

/// A key no config struct has: serde's refusal of it lists the keys the table does take.
const UNKNOWN_KEY: &str = "__no_such_key__";

/// What the parser says of a table holding only [`UNKNOWN_KEY`]: `Some(the keys it takes)`
/// when it is a table of known keys, `None` when the path is not a table at all (a value).
fn table_keys(prefix: &str, header: &str, path: &str) -> Option<Vec<String>> {
    let text = format!("{prefix}{header}\n{UNKNOWN_KEY} = 0\n");
    let Err(error) = toml::from_str::<Config>(&text) else {
        panic!(
            "`{path}` took an unknown key without complaint: every config table must refuse \
             unknown keys (#[serde(deny_unknown_fields)]) so that typos are caught"
        );
    };
    let message = error.message();
    let rest = message.strip_prefix(&format!("unknown field `{UNKNOWN_KEY}`"))?;
    Some(code_spans(rest).into_iter().map(str::to_owned).collect())
}

/// Every key the config parser accepts, as dotted paths (`detect.burst.bytes`; the keys of
/// each `[[detect.profile]]` as `detect.profile.name`), found by asking serde rather than from
/// a list that could fall behind.
fn accepted_keys() -> BTreeSet<String> {
    fn walk(keys: &mut BTreeSet<String>, prefix: &str, path: &str, fields: Vec<String>) {
        for field in fields {
            let path = if path.is_empty() {
                field
            } else {
                format!("{path}.{field}")
            };
            if let Some(fields) = table_keys(prefix, &format!("[{path}]"), &path) {
                walk(keys, &format!("{prefix}[{path}]\n"), &path, fields);
            } else if let Some(fields) = table_keys(prefix, &format!("[[{path}]]"), &path) {
                walk(keys, &format!("{prefix}[[{path}]]\n"), &path, fields);
            } else {
                keys.insert(path);
            }
        }
    }
    let top = table_keys("", "", "the config's top level").expect("the config is a table");
    let mut keys = BTreeSet::new();
    walk(&mut keys, "", "", top);
    keys
}

/// The embedded default's values by dotted key (arrays of tables left out: each profile is
/// its own row set).
fn default_values() -> BTreeMap<String, toml::Value> {
    fn walk(values: &mut BTreeMap<String, toml::Value>, path: &str, table: &toml::Table) {
        for (key, value) in table {
            let path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match value {
                toml::Value::Table(inner) => walk(values, &path, inner),
                toml::Value::Array(items)
                    if !items.is_empty() && items.iter().all(toml::Value::is_table) => {}
                _ => {
                    values.insert(path, value.clone());
                }
            }
        }
    }
    let table: toml::Table = toml::from_str(DEFAULT_TOML).expect("the default config parses");
    let mut values = BTreeMap::new();
    walk(&mut values, "", &table);
    values
}

/// A key as the reference names it: dotted lower-case words.
fn looks_like_key(text: &str) -> bool {
    text.contains('.')
        && text
            .split('.')
            .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
}

#[test]
fn every_config_key_is_in_the_configuration_reference_with_its_default() {
    let readme = read("README.md");
    let reference = section(&readme, "Configuration reference");
    let documented: BTreeMap<&str, Vec<&str>> = rows_by_code(reference)
        .into_iter()
        .filter(|(key, _)| looks_like_key(key))
        .collect();
    let accepted = accepted_keys();
    assert!(
        accepted.len() > 50 && accepted.contains("detect.profile.daily_budget"),
        "the key walk found too little: {accepted:?}"
    );
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|k| !documented.contains_key(k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "config keys without a row in the README's Configuration reference: {missing:?}"
    );
    let stale: Vec<&&str> = documented
        .keys()
        .filter(|k| !accepted.contains(**k))
        .collect();
    assert!(
        stale.is_empty(),
        "rows in the Configuration reference for keys the config does not take: {stale:?}"
    );
    for (key, value) in default_values() {
        let cells = &documented[key.as_str()];
        let shown = format!("`{value}`");
        assert!(
            cells.len() == 4 && cells[2].contains(&shown),
            "`{key}`: the default column should show {shown} (the embedded default), \
             not {:?}",
            cells.get(2)
        );
    }
}

// ---- Metrics -------------------------------------------------------------------------------

#[test]
fn every_alert_kind_and_fleet_alert_is_in_the_alert_reference() {
    let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        kinds,
        crate::metrics::ALERT_KINDS,
        "the metric's kinds are detection's"
    );
    let readme = read("README.md");
    let reference = section(&readme, "Alert reference");
    for kind in Kind::ALL {
        let heading = format!("\n### `{kind}`\n");
        let start = reference
            .find(&heading)
            .unwrap_or_else(|| panic!("the Alert reference has no `### `{kind}`` entry"));
        let entry = &reference[start + heading.len()..];
        let entry = &entry[..entry.find("\n### ").unwrap_or(entry.len())];
        let severity = format!("**Severity:** `{}`", kind.severity());
        assert!(
            entry.contains(&severity),
            "the `{kind}` entry should say {severity}"
        );
    }
    let rules = read("deploy/prometheus/rules.yml");
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            reference.contains(&format!("`{}`", name.trim())),
            "the fleet alert `{name}` (deploy/prometheus/rules.yml) is not in the Alert reference"
        );
    }
}

// ---- Probes --------------------------------------------------------------------------------

#[test]
fn every_probe_is_in_the_kernels_and_probes_table() {
    let readme = read("README.md");
    let reference = section(&readme, "Supported kernels and probes");
    let documented: BTreeSet<&str> = rows(reference)
        .iter()
        .filter_map(|cells| cells.first())
        .flat_map(|cell| code_spans(cell))
        .collect();
    let probes = crate::kernel::probe_names();
    for probe in &probes {
        assert!(
            documented.contains(probe),
            "probe `{probe}` has no row in the README's Supported kernels and probes"
        );
    }
    let stale: Vec<&&str> = documented
        .iter()
        .filter(|p| p.contains(':') && !probes.contains(p))
        .collect();
    assert!(
        stale.is_empty(),
        "rows for probes the agent does not have: {stale:?}"
    );
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

// ---- Links ---------------------------------------------------------------------------------

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens, and
/// `-1`, `-2` … after a repeat.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let Some(title) = line.strip_prefix('#').filter(|_| !fenced) else {
            continue;
        };
        let slug: String = title
            .trim_start_matches('#')
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(slug.clone()).or_default();
        anchors.insert(if *count == 0 {
            slug
        } else {
            format!("{slug}-{count}")
        });
        *count += 1;
    }
    anchors
}

#[test]
fn every_link_within_the_readme_names_a_heading() {
    let readme = read("README.md");
    let anchors = anchors(&readme);
    let mut checked = 0;
    for (i, _) in readme.match_indices("](#") {
        let target: String = readme[i + 3..].chars().take_while(|c| *c != ')').collect();
        checked += 1;
        assert!(
            anchors.contains(&target),
            "the README links to #{target}, which no heading is"
        );
    }
    assert!(checked > 10, "too few links found: {checked}");
}

/// The version the workspace builds (what `--version`, the start records and the .deb's name
/// carry) is the one the README installs and the newest of its changelog.
#[test]
fn the_readme_installs_and_describes_the_version_built() {
    let readme = read("README.md");
    let version = env!("CARGO_PKG_VERSION");
    let installs: Vec<&str> = section(&readme, "Installing from the .deb")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("dpkg -i "))
        .collect();
    assert_eq!(
        installs,
        [format!("target/debian/exfil-sensor_{version}-1_amd64.deb")]
    );
    let newest = section(&readme, "Changelog")
        .lines()
        .find_map(|l| l.strip_prefix("### "));
    assert_eq!(newest, Some(version), "the newest changelog entry");
}

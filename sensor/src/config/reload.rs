//! What a config reload (SIGHUP) changes: which keys of the new file take effect at once,
//! which keep their old value until a restart, and the config the agent runs with after it.
//!
//! Detection (thresholds, windows, profiles), `networks.internal` and the file classes are
//! plain data the aggregating thread consults on each poll or interval: they change at once.
//! Everything bound, opened, created or sized at start (listeners, the API socket, the kernel
//! maps and their pins, the journal, the alert sinks' queues and connections, the metrics'
//! label budgets, table limits, the poll period, the path hash key) keeps its old value until
//! the agent restarts, and the reload's log line names each such key that changed.

use std::{net::SocketAddr, path::PathBuf};

use super::{Config, ConfigError};

/// The command line's overrides of `run`, applied to the file at start and at each reload,
/// so that a reload does not see them as changes.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub api_socket: Option<PathBuf>,
    pub web_config_file: Option<PathBuf>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.http.listen = listen;
        }
        if let Some(api_socket) = &self.api_socket {
            config.http.api_socket.clone_from(api_socket);
        }
        if let Some(web_config_file) = &self.web_config_file {
            config.http.web_config_file = Some(web_config_file.clone());
        }
    }
}

/// The keys a new file changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// In force as soon as the aggregating thread takes the reload.
    pub applied: Vec<&'static str>,
    /// Changed in the file, but the old value stays until a restart.
    pub need_restart: Vec<&'static str>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.need_restart.is_empty()
    }
}

/// The keys (or, for detection's tables, the tables) of `new` that differ from `old`.
pub fn changes(old: &Config, new: &Config) -> Changes {
    let mut changes = Changes::default();
    macro_rules! compare {
        ($list:ident: $($key:literal => $($field:ident).+),+ $(,)?) => {
            $(if old.$($field).+ != new.$($field).+ {
                changes.$list.push($key);
            })+
        };
    }
    compare!(applied:
        "detect.quiet" => detect.quiet,
        "detect.max_alerts" => detect.max_alerts,
        "detect.burst" => detect.burst,
        "detect.lineage" => detect.lineage,
        "detect.new_destination" => detect.new_destination,
        "detect.baseline" => detect.baseline,
        "detect.slow_leak" => detect.slow_leak,
        "detect.budget" => detect.budget,
        "detect.profile" => detect.profile,
        "networks.internal" => networks.internal,
        "files.secrets" => files.secrets,
        "files.mail_store" => files.mail_store,
        "files.records" => files.records,
        "files.class" => files.class,
    );
    compare!(need_restart:
        "agent.poll_interval" => agent.poll_interval,
        "agent.interval" => agent.interval,
        "flows.max_flows" => flows.max_flows,
        "flows.max_files" => flows.max_files,
        "flows.idle_ttl" => flows.idle_ttl,
        "files.hash_paths" => files.hash_paths,
        "files.hash_key_file" => files.hash_key_file,
        "http.listen" => http.listen,
        "http.api_socket" => http.api_socket,
        "http.api_listen" => http.api_listen,
        "http.api_token_file" => http.api_token_file,
        "http.web_config_file" => http.web_config_file,
        "http.header_read_timeout" => http.header_read_timeout,
        "http.max_header_bytes" => http.max_header_bytes,
        "kernel.btf" => kernel.btf,
        "kernel.flow_map_entries" => kernel.flow_map_entries,
        "kernel.file_map_entries" => kernel.file_map_entries,
        "kernel.pin_dir" => kernel.pin_dir,
        "metrics.destinations_per_service" => metrics.destinations_per_service,
        "metrics.series_ttl" => metrics.series_ttl,
        "metrics.max_services" => metrics.max_services,
        "detect.state_file" => detect.state_file,
        "journal.enabled" => journal.enabled,
        "journal.dir" => journal.dir,
        "journal.segment_size" => journal.segment_size,
        "journal.segment_age" => journal.segment_age,
        "journal.retain_size" => journal.retain_size,
        "journal.retain_age" => journal.retain_age,
        "journal.fsync" => journal.fsync,
        "journal.redact_paths" => journal.redact_paths,
        "alerts.json_lines" => alerts.json_lines,
        "alerts.alertmanager" => alerts.alertmanager,
        "alerts.webhook" => alerts.webhook,
        // The ingress program is attached and the name cache sized at start.
        "dns.enabled" => dns.enabled,
        "dns.grace" => dns.grace,
        "dns.max_addresses" => dns.max_addresses,
    );
    changes
}

/// The config in force after reloading `new` over `old`: `new`'s keys that apply at run
/// time, `old`'s for the rest. Validated as a whole (a new detection window must still be
/// at least the interval in force); an error names `path`, and the reload is refused.
pub fn in_force(old: &Config, new: &Config, path: &str) -> Result<Config, ConfigError> {
    let mut config = old.clone();
    let state_file = old.detect.state_file.clone();
    config.detect = new.detect.clone();
    config.detect.state_file = state_file;
    config.networks = new.networks.clone();
    config.files.secrets.clone_from(&new.files.secrets);
    config.files.mail_store.clone_from(&new.files.mail_store);
    config.files.records.clone_from(&new.files.records);
    config.files.class.clone_from(&new.files.class);
    config.validate(path)?;
    Ok(config)
}

/// Reads and checks the file at `path` as a reload would: the config then in force, what
/// changed, and the file's text (for the journal); or the error that keeps `old` in force.
pub fn reload(
    old: &Config,
    path: &std::path::Path,
    overrides: &Overrides,
) -> Result<(Config, Changes, String), ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: name.clone(),
        cause,
    })?;
    let mut new = Config::parse(&text, &name)?;
    overrides.apply(&mut new);
    let config = in_force(old, &new, &name)?;
    Ok((config, changes(old, &new), text))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, "test.toml").expect("a good config")
    }

    #[test]
    fn an_identical_file_changes_nothing() {
        let old = parse("[detect.burst]\nbytes = \"8 MiB\"\n");
        let new = parse("[detect.burst]\nbytes = \"8 MiB\"\n");
        assert!(changes(&old, &new).is_empty());
        assert_eq!(in_force(&old, &new, "test.toml").expect("valid"), old);
    }

    #[test]
    fn runtime_keys_apply_and_startup_keys_wait_for_a_restart() {
        let old = parse("");
        let new = parse(
            "[networks]\ninternal = [\"203.0.113.0/24\"]\n\
             [files]\nrecords = [\"/srv/records\"]\n\
             [http]\nlisten = \"127.0.0.1:9000\"\n\
             [kernel]\nflow_map_entries = 1024\npin_dir = \"/sys/fs/bpf/other\"\n\
             [journal]\ndir = \"/srv/journal\"\n\
             [detect.burst]\nbytes = \"8 MiB\"\n\
             [dns]\nenabled = false\n",
        );
        assert_eq!(
            changes(&old, &new),
            Changes {
                applied: vec!["detect.burst", "networks.internal", "files.records"],
                need_restart: vec![
                    "http.listen",
                    "kernel.flow_map_entries",
                    "kernel.pin_dir",
                    "journal.dir",
                    "dns.enabled",
                ],
            }
        );
        let now = in_force(&old, &new, "test.toml").expect("valid");
        assert_eq!(now.detect.burst.bytes.as_u64(), 8 << 20);
        assert_eq!(now.networks, new.networks);
        assert_eq!(now.files.records, vec!["/srv/records".to_owned()]);
        // What needs a restart is as it was.
        assert_eq!(now.http, old.http);
        assert_eq!(now.kernel, old.kernel);
        assert_eq!(now.journal, old.journal);
        assert_eq!(now.dns, old.dns);
    }

    #[test]
    fn the_state_file_and_the_path_hash_wait_for_a_restart() {
        let old = parse("");
        let new = parse("[files]\nhash_paths = true\n[detect]\nstate_file = \"/srv/state.json\"\n");
        assert_eq!(
            changes(&old, &new).need_restart,
            vec!["files.hash_paths", "detect.state_file"]
        );
        let now = in_force(&old, &new, "test.toml").expect("valid");
        assert_eq!(now, old);
    }

    #[test]
    fn command_line_overrides_are_no_change() {
        let overrides = Overrides {
            listen: Some("127.0.0.1:9999".parse().expect("addr")),
            api_socket: Some(PathBuf::from("/tmp/api.sock")),
            web_config_file: None,
        };
        let mut old = parse("");
        overrides.apply(&mut old);
        let mut new = parse("");
        overrides.apply(&mut new);
        assert!(changes(&old, &new).is_empty());
    }

    #[test]
    fn a_window_shorter_than_the_interval_in_force_is_refused() {
        let old = parse("[agent]\ninterval = \"20s\"\n");
        // Valid on its own (its interval is 10s), not with the 20s interval in force.
        let new = parse("[detect.burst]\nwindow = \"15s\"\n");
        let err = in_force(&old, &new, "new.toml").expect_err("refused");
        assert_eq!(
            err.to_string(),
            "config new.toml: detect.burst.window = 15s: must be at least agent.interval"
        );
        assert_eq!(old.agent.interval, Duration::from_secs(20));
    }

    #[test]
    fn a_bad_file_names_its_line_and_column() {
        let dir = std::env::temp_dir().join(format!("exfil-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[detect.burst]\nbytes = \"8 MiB\"\nnope = 1\n").expect("write");
        let old = parse("");
        let err = reload(&old, &path, &Overrides::default()).expect_err("refused");
        let _ = std::fs::remove_dir_all(&dir);
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "config {}: line 3, column 1: unknown field `nope`",
                path.display()
            )),
            "{text}"
        );
    }
}

//! Config parsing and validation: defaults, the embedded file, and each error named.
use super::*;

#[test]
fn embedded_default_is_the_default() {
    let parsed = Config::parse(DEFAULT_TOML, "default.toml").expect("default parses");
    assert_eq!(parsed, Config::default());
    assert_eq!(
        Config::parse("", "empty.toml").expect("empty"),
        Config::default()
    );
}

#[test]
fn unknown_key_is_named_with_line_and_column() {
    let err = Config::parse(
        "[agent]\npoll_interval = \"2s\"\npol_interval = \"1s\"\n",
        "x.toml",
    )
    .expect_err("unknown key");
    assert_eq!(
        err.to_string(),
        "config x.toml: line 3, column 1: unknown field `pol_interval`, expected `poll_interval` or `interval`"
    );
}

#[test]
fn absurd_values_are_refused_by_key() {
    let err = Config::parse("[agent]\npoll_interval = \"0s\"\n", "x.toml").expect_err("zero");
    assert_eq!(
        err.to_string(),
        "config x.toml: line 2, column 17: agent.poll_interval = 0s: must be between 100ms and 1h"
    );
    let err = Config::parse("[kernel]\nflow_map_entries = 0\n", "x.toml").expect_err("zero map");
    assert_eq!(
        err.to_string(),
        "config x.toml: line 2, column 20: kernel.flow_map_entries = 0: must be between 1 and 16777216"
    );
    let err = Config::parse("[http]\nlisten = \"nowhere\"\n", "x.toml").expect_err("addr");
    assert_eq!(
        err.to_string(),
        "config x.toml: line 2, column 10: http.listen: invalid socket address syntax"
    );
}

#[test]
fn new_sections_are_checked_by_key() {
    let err = Config::parse("[networks]\ninternal = [\"192.0.2.0/33\"]\n", "x.toml")
        .expect_err("bad prefix");
    assert_eq!(
        err.to_string(),
        "config x.toml: line 2, column 13: networks.internal[0]: invalid IP address syntax"
    );
    let err = Config::parse("[files]\nrecords = [\"/srv/[x\"]\n", "x.toml").expect_err("bad glob");
    assert!(
        err.to_string()
            .starts_with("config x.toml: files.records[0] = \"/srv/[x\": "),
        "{err}"
    );
    let err =
        Config::parse("[http]\napi_listen = \"127.0.0.1:9968\"\n", "x.toml").expect_err("no token");
    assert_eq!(
        err.to_string(),
        "config x.toml: line 2, column 14: http.api_listen = 127.0.0.1:9968: a TCP JSON API needs http.api_token_file (a bearer token) or an http.web_config_file that requires client certificates"
    );
    let err = Config::parse("[agent]\ninterval = \"500ms\"\n", "x.toml").expect_err("short");
    assert_eq!(
        err.to_string(),
        "config x.toml: line 2, column 12: agent.interval = 500ms: must be between agent.poll_interval and 1h"
    );
    let c = Config::parse(
        "[networks]\ninternal = [\"192.0.2.0/24\"]\n[[files.class]]\nname = \"exports\"\npaths = [\"/srv/exports\"]\n",
        "x.toml",
    )
    .expect("parses");
    let classes = c.file_classes("x.toml").expect("compiles");
    assert_eq!(classes.classify(Some("/srv/exports/q3.csv")), "exports");
    assert_eq!(classes.classify(Some("/var/mail/alice")), "mail_store");
    assert_eq!(
        c.networks()
            .classify(Some("192.0.2.1".parse().expect("ip"))),
        crate::flow::class::DestinationClass::Internal
    );
}

#[test]
fn detection_and_sink_settings_are_checked_by_key() {
    let err = Config::parse("[detect.burst]\nbytes = 0\n", "x.toml").expect_err("zero");
    assert_eq!(
        err.to_string(),
        "config x.toml: line 2, column 9: detect.burst.bytes = 0: must be more than 0 bytes"
    );
    let err = Config::parse("[detect.burst]\nbytes = \"lots\"\n", "x.toml").expect_err("text");
    assert!(
        err.to_string()
            .starts_with("config x.toml: line 2, column 9: "),
        "{err}"
    );
    let err = Config::parse("[detect]\nquiet = \"1s\"\n", "x.toml").expect_err("short");
    assert_eq!(
        err.to_string(),
        "config x.toml: line 2, column 9: detect.quiet = 1s: must be at least agent.interval"
    );
    let err = Config::parse(
        "[[detect.profile]]\nname = \"x\"\nservices = [\"[\"]\n",
        "x.toml",
    )
    .expect_err("glob");
    assert!(
        err.to_string()
            .starts_with("config x.toml: detect.profile \"x\": services: \"[\": "),
        "{err}"
    );
    let err =
        Config::parse("[alerts.webhook]\nurl = \"https://h/x\"\n", "x.toml").expect_err("tls");
    assert!(
        err.to_string()
            .starts_with("config x.toml: alerts.webhook.url = "),
        "{err}"
    );
    let c = Config::parse(
        "[detect.burst]\nbytes = \"20 MiB\"\n[alerts]\njson_lines = \"/var/log/a.jsonl\"\n",
        "x.toml",
    )
    .expect("parses");
    assert_eq!(c.detect.burst.bytes.as_u64(), 20 << 20);
    assert_eq!(c.alerts.json_lines, Some(PathBuf::from("/var/log/a.jsonl")));
}

#[test]
fn values_are_read() {
    let c = Config::parse(
        "[agent]\npoll_interval = \"250ms\"\n[http]\nlisten = \"127.0.0.1:19967\"\n",
        "x.toml",
    )
    .expect("parses");
    assert_eq!(c.agent.poll_interval, Duration::from_millis(250));
    assert_eq!(c.http.listen, "127.0.0.1:19967".parse().expect("addr"));
}

#[test]
fn an_empty_state_file_keeps_no_state() {
    let off = Config::parse("[detect]\nstate_file = \"\"\n", "t.toml").expect("parses");
    assert_eq!(off.detect.state_file, None);
    let other =
        Config::parse("[detect]\nstate_file = \"/srv/state.json\"\n", "t.toml").expect("parses");
    assert_eq!(
        other.detect.state_file.as_deref(),
        Some(std::path::Path::new("/srv/state.json"))
    );
}

/// Each absurd value gets one line: the key, its line and column, and what is allowed.
fn refused(text: &str) -> String {
    Config::parse(text, "x.toml")
        .expect_err("refused")
        .to_string()
}

#[test]
fn absurd_values_are_named_with_line_column_and_range() {
    assert_eq!(
        refused("[agent]\ninterval = \"0s\"\n"),
        "config x.toml: line 2, column 12: agent.interval = 0s: must be between agent.poll_interval and 1h"
    );
    assert_eq!(
        refused("[flows]\nmax_flows = 0\n"),
        "config x.toml: line 2, column 13: flows.max_flows = 0: must be between 1 and 10000000"
    );
    assert_eq!(
        refused("[flows]\nmax_files = 20000000\n"),
        "config x.toml: line 2, column 13: flows.max_files = 20000000: must be between 1 and 10000000"
    );
    assert_eq!(
        refused("[kernel]\nflow_map_entries = -5\n"),
        "config x.toml: line 2, column 20: kernel.flow_map_entries = -5: must be between 1 and \
         16777216"
    );
    assert_eq!(
        refused("[metrics]\nmax_services = -1\n"),
        "config x.toml: line 2, column 16: metrics.max_services = -1: must be between 1 and 100000"
    );
    assert_eq!(
        refused("[detect.baseline]\nsigma = -3.0\n"),
        "config x.toml: line 2, column 9: detect.baseline.sigma = -3: must be above 0 and at most 100"
    );
    assert_eq!(
        refused("[detect.burst]\nbytes = -5\n"),
        "config x.toml: line 2, column 9: detect.burst.bytes = -5: must be more than 0 bytes"
    );
    assert_eq!(
        refused("[http]\nlisten = \"127.0.0.1:70000\"\n"),
        "config x.toml: line 2, column 10: http.listen: invalid socket address syntax"
    );
    assert_eq!(
        refused("[flows]\nmax_flows = 99999999999999999999\n"),
        "config x.toml: line 2, column 13: flows.max_flows = 99999999999999999999: must be between \
         1 and 10000000"
    );
    assert_eq!(
        refused("[flows]\nidle_ttl = \"99999999999y\"\n"),
        "config x.toml: line 2, column 12: flows.idle_ttl = 99999999999years: must be between \
         agent.interval and 30d"
    );
    // Port 0 is allowed: the kernel picks a free port (tests use it).
    let any_port = Config::parse("[http]\nlisten = \"127.0.0.1:0\"\n", "x.toml").expect("port 0");
    assert_eq!(any_port.http.listen.port(), 0);
}

#[test]
fn an_empty_class_pattern_is_named_with_line_and_column() {
    assert_eq!(
        refused("[files]\nrecords = [\"/srv\", \"\"]\n"),
        "config x.toml: line 2, column 20: files.records[1] = \"\": an empty pattern would match \
         every file; remove it"
    );
    assert_eq!(
        refused("[[files.class]]\nname = \"exports\"\npaths = [\" \"]\n"),
        "config x.toml: line 3, column 10: files.class[0].paths[0] = \"\": an empty pattern would \
         match every file; remove it"
    );
}

#[test]
fn disabled_probes_are_checked_by_name() {
    let c = Config::parse(
        "[kernel]\ndisable_probes = [\"filemap:mm_filemap_fault\"]\n",
        "x.toml",
    )
    .expect("parses");
    assert_eq!(
        c.kernel.disable_probes,
        [ProbeName("filemap:mm_filemap_fault")]
    );
    assert_eq!(
        refused("[kernel]\ndisable_probes = [\"filemap:mm_filemap_fault\", \"filemap:nope\"]\n"),
        format!(
            "config x.toml: line 2, column 18: kernel.disable_probes: no probe \"filemap:nope\"; \
             the probes are {}",
            crate::kernel::probe_names().join(", ")
        )
    );
    assert_eq!(
        refused("[kernel]\ndisable_probes = [\"sock:sock_send_length\"]\n"),
        "config x.toml: line 2, column 18: kernel.disable_probes: sock:sock_send_length cannot be \
         disabled: the sensor counts no sent bytes without it"
    );
}

#[test]
fn a_toml_syntax_error_is_named_with_line_and_column() {
    assert_eq!(
        refused("[agent]\npoll_interval = \"1s\n"),
        "config x.toml: line 2, column 20: invalid basic string, expected `\"`"
    );
    assert_eq!(
        refused("[agent\n"),
        "config x.toml: line 1, column 7: unclosed table, expected `]`"
    );
    assert_eq!(
        refused("[kernel]\nflow_map_entries = 1\nflow_map_entries = 2\n"),
        "config x.toml: line 3, column 1: duplicate key `flow_map_entries`"
    );
}

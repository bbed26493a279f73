//! The command line (shared/CONTRACT.md lists the subcommands users' scripts rely on).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{api::Filter, config::HttpConfig};

#[derive(Debug, Parser)]
#[command(
    name = "exfil-sensor",
    version,
    about = "Counts what leaves this server, per process and destination"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sensor in the foreground until SIGTERM or Ctrl-C.
    Run {
        /// Config file; without it, the embedded default (`exfil-sensor config default`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address for /metrics and /healthz (overrides http.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Unix socket for the JSON API (overrides http.api_socket).
        #[arg(long)]
        api_socket: Option<PathBuf>,
        /// TLS and basic auth for the TCP listeners, in Prometheus exporter-toolkit's
        /// web-config.yml format (overrides http.web_config_file; node_exporter's flag).
        #[arg(
            long = "web.config.file",
            alias = "web-config-file",
            value_name = "PATH"
        )]
        web_config_file: Option<PathBuf>,
    },
    /// Validate a config file: exit 0 when it is good, else one line naming the bad key.
    CheckConfig { file: PathBuf },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Live terminal view of the top talkers, read from a running agent.
    Top {
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Flows (process × destination) of a running agent, most bytes sent first.
    Flows(ListArgs),
    /// Files read, per process, of a running agent, most bytes read first.
    Files(ListArgs),
    /// Alerts a running agent raised since it started.
    Alerts(ListArgs),
    /// Journal helpers.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Re-run detection over a journal; prints each alert with its destination.
    Replay {
        dir: PathBuf,
        /// Config whose detection rules and internal networks to apply; without it, the
        /// config each start record holds (the live agent's own).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Only alerts raised from this time on (RFC 3339, e.g. 2026-11-23T19:00:00Z); the
        /// records before it still pass through detection (learning, baselines).
        #[arg(long, value_parser = rfc3339)]
        from: Option<humantime::Timestamp>,
        /// Only alerts raised before this time (RFC 3339).
        #[arg(long, value_parser = rfc3339)]
        to: Option<humantime::Timestamp>,
        #[arg(long, value_enum, default_value_t = ReplayFormat::Table)]
        format: ReplayFormat,
    },
    /// Timeline of external volume per service × destination in a journal, the top
    /// destinations and the alerts raised. Several journal directories (one per host, as
    /// collected from a fleet) merge into one report by host.
    Report {
        #[arg(required = true, num_args = 1.., value_name = "DIR")]
        dirs: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Only intervals from this time on (RFC 3339).
        #[arg(long, value_parser = rfc3339)]
        from: Option<humantime::Timestamp>,
        /// Only intervals before this time (RFC 3339).
        #[arg(long, value_parser = rfc3339)]
        to: Option<humantime::Timestamp>,
        /// Timeline buckets; without it, hours for spans up to three days, else days.
        #[arg(long, value_enum)]
        by: Option<ReportBucket>,
        /// How many destinations the timeline shows apart (the rest as `other`).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=100))]
        top: u16,
    },
    /// Foreign evidence into a journal that `replay` reads.
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the embedded default configuration.
    Default,
}

#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Exit 0 if the journal is intact; else name the first bad record.
    Verify { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum ImportSource {
    /// A Zeek conn.log.
    Zeek {
        file: PathBuf,
        /// Journal directory to write (new or empty).
        #[arg(long)]
        out: PathBuf,
        /// Config whose internal networks class the addresses and whose `agent.interval`
        /// is the records' length; recorded in the journal for `replay`. Without it, the
        /// embedded default.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplayFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportBucket {
    Hour,
    Day,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
    Csv,
    Svg,
}

/// Where a client subcommand finds the agent.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent's JSON API socket (its http.api_socket).
    #[arg(long, default_value_os_t = HttpConfig::default().api_socket)]
    pub api_socket: PathBuf,
}

/// `flows`, `files` and `alerts`: which rows, and how to print them.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the agent's JSON array (one pretty document) instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Only rows of this service (exact unit name, e.g. postfix.service).
    #[arg(long)]
    pub service: Option<String>,
    /// Only rows of this class: destination class for flows, file class for files, alert
    /// kind for alerts.
    #[arg(long)]
    pub class: Option<String>,
    /// At most this many rows, largest first.
    #[arg(long)]
    pub limit: Option<usize>,
}

impl ListArgs {
    pub fn filter(&self) -> Filter {
        Filter {
            service: self.service.clone(),
            class: self.class.clone(),
            limit: self.limit,
        }
    }
}

/// A time given on the command line; the error says which form is wanted (humantime's own,
/// "timestamp format is invalid", does not).
fn rfc3339(text: &str) -> Result<humantime::Timestamp, String> {
    text.parse()
        .map_err(|e| format!("{e}: an RFC 3339 time is wanted, e.g. 2026-11-23T19:00:00Z"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_overrides_parse() {
        let cli = Cli::try_parse_from([
            "exfil-sensor",
            "run",
            "--listen",
            "127.0.0.1:1",
            "--api-socket",
            "/tmp/a.sock",
        ])
        .expect("parses");
        let Command::Run {
            listen, api_socket, ..
        } = cli.command
        else {
            panic!("not run: {cli:?}");
        };
        assert_eq!(listen, Some("127.0.0.1:1".parse().expect("addr")));
        assert_eq!(api_socket, Some(PathBuf::from("/tmp/a.sock")));
    }

    #[test]
    fn run_takes_node_exporters_web_config_flag_and_a_plain_spelling() {
        for flag in ["--web.config.file", "--web-config-file"] {
            let Command::Run {
                web_config_file, ..
            } = parse(&["run", flag, "/etc/exfil-sensor/web.yml"])
            else {
                panic!("not run");
            };
            assert_eq!(
                web_config_file,
                Some(PathBuf::from("/etc/exfil-sensor/web.yml")),
                "{flag}"
            );
        }
        let Command::Run {
            web_config_file, ..
        } = parse(&["run", "--web.config.file=/w.yml"])
        else {
            panic!("not run");
        };
        assert_eq!(web_config_file, Some(PathBuf::from("/w.yml")));
    }

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("exfil-sensor").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
    }

    #[test]
    fn list_commands_default_to_the_configured_socket() {
        let Command::Flows(args) = parse(&["flows"]) else {
            panic!("not flows");
        };
        assert!(!args.json);
        assert_eq!(args.agent.api_socket, HttpConfig::default().api_socket);
        assert_eq!(args.filter(), Filter::default());
    }

    #[test]
    fn list_filters_parse() {
        let Command::Alerts(args) = parse(&[
            "alerts",
            "--json",
            "--api-socket",
            "/tmp/a.sock",
            "--service",
            "backup.service",
            "--class",
            "burst",
            "--limit",
            "3",
        ]) else {
            panic!("not alerts");
        };
        assert!(args.json);
        assert_eq!(args.agent.api_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(
            args.filter().query_string(),
            "?service=backup.service&class=burst&limit=3"
        );
        assert!(matches!(
            parse(&["files", "--limit", "1"]),
            Command::Files(_)
        ));
        assert!(
            Cli::try_parse_from(["exfil-sensor", "files", "--limit", "-1"]).is_err(),
            "a negative limit"
        );
    }

    #[test]
    fn top_takes_a_socket() {
        let Command::Top { agent } = parse(&["top", "--api-socket", "/tmp/b.sock"]) else {
            panic!("not top");
        };
        assert_eq!(agent.api_socket, PathBuf::from("/tmp/b.sock"));
    }

    #[test]
    fn journal_commands_parse() {
        let Command::Journal {
            command: JournalCommand::Verify { dir },
        } = parse(&["journal", "verify", "/var/lib/exfil-sensor/journal"])
        else {
            panic!("not journal verify");
        };
        assert_eq!(dir, PathBuf::from("/var/lib/exfil-sensor/journal"));
        let Command::Replay {
            dir,
            config,
            from,
            to,
            format,
        } = parse(&[
            "replay",
            "j",
            "--config",
            "c.toml",
            "--from",
            "2026-11-23T19:00:00Z",
            "--format",
            "json",
        ])
        else {
            panic!("not replay");
        };
        assert_eq!(dir, PathBuf::from("j"));
        assert_eq!(config, Some(PathBuf::from("c.toml")));
        assert_eq!(
            from.map(|t| *t),
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_460_400))
        );
        assert_eq!(to, None);
        assert_eq!(format, ReplayFormat::Json);
        assert!(
            Cli::try_parse_from(["exfil-sensor", "replay", "j", "--from", "yesterday"]).is_err()
        );
        assert!(matches!(
            parse(&["report", "j", "--format", "svg"]),
            Command::Report {
                format: ReportFormat::Svg,
                ..
            }
        ));
        assert!(matches!(
            parse(&["report", "j"]),
            Command::Report {
                format: ReportFormat::Table,
                ..
            }
        ));
        assert!(matches!(
            parse(&["import", "zeek", "conn.log", "--out", "j"]),
            Command::Import { source: ImportSource::Zeek { file, out, config: None } }
                if file == Path::new("conn.log") && out == Path::new("j")
        ));
        assert!(matches!(
            parse(&["report", "j", "--service", "dovecot.service", "--by", "day", "--top", "3"]),
            Command::Report { service: Some(s), by: Some(ReportBucket::Day), top: 3, .. }
                if s == "dovecot.service"
        ));
        assert!(matches!(
            parse(&["report", "mail1/journal", "db1/journal"]),
            Command::Report { dirs, .. }
                if dirs == [Path::new("mail1/journal"), Path::new("db1/journal")]
        ));
        assert!(
            Cli::try_parse_from(["exfil-sensor", "report"]).is_err(),
            "a report of no journal"
        );
        assert!(
            Cli::try_parse_from(["exfil-sensor", "report", "j", "--top", "0"]).is_err(),
            "a report of no destinations"
        );
        assert!(Cli::try_parse_from(["exfil-sensor", "import", "zeek", "conn.log"]).is_err());
    }

    #[test]
    fn bad_listen_address_is_refused() {
        let err = Cli::try_parse_from(["exfil-sensor", "run", "--listen", "localhost"])
            .expect_err("not an address");
        assert!(
            err.to_string()
                .contains("invalid value 'localhost' for '--listen"),
            "{err}"
        );
    }
}

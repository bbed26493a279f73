//! The command line (shared/CONTRACT.md lists the subcommands users' scripts rely on).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

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
    },
    /// Validate a config file: exit 0 when it is good, else one line naming the bad key.
    CheckConfig { file: PathBuf },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the embedded default configuration.
    Default,
}

#[cfg(test)]
mod tests {
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

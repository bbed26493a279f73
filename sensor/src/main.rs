//! exfil-sensor: counts the bytes each process reads from files and sends to each remote
//! destination, in kernel maps, and serves them to Prometheus and to incident responders.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;

use sensor::{
    cli::{Cli, Command, ConfigCommand, LogFormat},
    config::{self, Config},
    daemon,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, outermost first.
            eprintln!("exfil-sensor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            listen,
            api_socket,
        } => {
            let mut config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::parse(config::DEFAULT_TOML, "(embedded default)")?,
            };
            if let Some(listen) = listen {
                config.http.listen = listen;
            }
            if let Some(api_socket) = api_socket {
                config.http.api_socket = api_socket;
            }
            daemon::run(config)
        }
        Command::CheckConfig { file } => {
            Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", config::DEFAULT_TOML);
            Ok(())
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EXFIL_SENSOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

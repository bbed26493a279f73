//! exfil-sensor: counts the bytes each process reads from files and sends to each remote
//! destination, in kernel maps, and serves them to Prometheus and to incident responders.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;

use sensor::{
    cli::{
        Cli, Command, ConfigCommand, ImportSource, JournalCommand, ListArgs, LogFormat,
        ReportBucket,
    },
    config::{self, Config},
    daemon::{self, ConfigSource},
    forensics, journal,
    listing::{self, Format, Listing},
    report, top,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and its causes, outermost first.
            eprintln!("exfil-sensor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Flows(args) => list(Listing::Flows, &args),
        Command::Files(args) => list(Listing::Files, &args),
        Command::Alerts(args) => list(Listing::Alerts, &args),
        Command::Top { agent } => {
            top::run(&agent.api_socket)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Journal {
            command: JournalCommand::Verify { dir },
        } => verify(&dir),
        Command::Replay {
            dir,
            config,
            from,
            to,
            format,
        } => out(&forensics::replay(&forensics::ReplayArgs {
            dir,
            config,
            from,
            to,
            format,
        })?),
        Command::Report {
            dirs,
            format,
            service,
            from,
            to,
            by,
            top,
        } => out(&forensics::report(&forensics::ReportArgs {
            dirs,
            format,
            service,
            from,
            to,
            by: by.map(|b| match b {
                ReportBucket::Hour => report::Bucket::Hour,
                ReportBucket::Day => report::Bucket::Day,
            }),
            top: usize::from(top),
        })?),
        Command::Import {
            source:
                ImportSource::Zeek {
                    file,
                    out: dir,
                    config,
                },
        } => out(&forensics::import_zeek(&file, &dir, config.as_deref())?),
        Command::Run {
            config,
            listen,
            api_socket,
            web_config_file,
        } => {
            let overrides = config::reload::Overrides {
                listen,
                api_socket,
                web_config_file,
            };
            let source = match config {
                Some(path) => ConfigSource {
                    path: path.display().to_string(),
                    text: std::fs::read_to_string(&path).map_err(|cause| {
                        config::ConfigError::Read {
                            path: path.display().to_string(),
                            cause,
                        }
                    })?,
                    file: Some(path),
                    overrides,
                },
                None => ConfigSource {
                    path: "(embedded default)".to_owned(),
                    text: config::DEFAULT_TOML.to_owned(),
                    file: None,
                    overrides,
                },
            };
            let mut config = Config::parse(&source.text, &source.path)?;
            source.overrides.apply(&mut config);
            daemon::run(config, source)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            sensor::http::web_config(&config.http)?;
            out(&format!("{}: ok\n", file.display()))
        }
        Command::Config {
            command: ConfigCommand::Default,
        } => out(config::DEFAULT_TOML),
    }
}

/// `journal verify`: one line on stdout; exit 0 when intact, 1 at the first damage.
fn verify(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let verdict = journal::verify(dir)?;
    let code = out(&format!("{}\n", verdict.line(dir)))?;
    Ok(match verdict {
        journal::Verdict::Intact(_) => code,
        journal::Verdict::Damaged(_) => ExitCode::FAILURE,
    })
}

fn list(listing: Listing, args: &ListArgs) -> anyhow::Result<ExitCode> {
    let format = if args.json {
        Format::Json
    } else {
        Format::Table
    };
    let text = listing::show(listing, &args.agent.api_socket, &args.filter(), format)?;
    out(&text)
}

/// Writes a command's output to stdout. A reader that stops early (`| head`) ends the
/// command quietly, as it does `ls` or `grep`: the output it did not want is no error.
fn out(text: &str) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
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

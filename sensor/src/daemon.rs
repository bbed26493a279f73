//! `exfil-sensor run`: bind the listeners, load the sensor, poll it until told to stop;
//! reload the config on SIGHUP ([`reload`]).

pub(crate) mod reload;

use std::{
    path::PathBuf,
    sync::{Arc, mpsc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

use crate::{
    agent::{self, Aggregator, Message, PollInput, TamperReport},
    config::{Config, reload::Overrides},
    detect::tamper::Tamper,
    flow::{
        identity::ProcFs,
        interval::{Interval, unix_ms},
        paths::{Mounts, WalkedPath},
        process::ProcessTable,
    },
    health::Health,
    http,
    journal::{
        StartRecord,
        live::{JournalHealth, JournalMetrics, JournalThread},
    },
    kernel::{
        DeadKeys, Finding, KernelOptions, KernelSums, ProbeState, Sensor, path_ring::PathRing,
    },
    metrics::Metrics,
};

/// Where the config came from, and its text: the journal's start record keeps both.
pub struct ConfigSource {
    /// The file's path, or `(embedded default)`.
    pub path: String,
    pub text: String,
    /// The file, read again on SIGHUP; `None` for the embedded default.
    pub file: Option<PathBuf>,
    /// The command line's overrides, applied to the file at start and at each reload.
    pub overrides: Overrides,
}

pub fn run(config: Config, source: ConfigSource) -> anyhow::Result<()> {
    // Fail on missing privileges before anything else, with one line that says so.
    crate::kernel::host::check_privileges()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, source))
}

async fn serve(config: Config, source: ConfigSource) -> anyhow::Result<()> {
    // SIGHUP's default action ends the process: watched from the start, so that a reload
    // sent early (a unit's ExecReload during start-up) is taken, not fatal.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("watching SIGHUP")?;
    // Read the web config and bind first: a bad certificate or a port in use is reported
    // before any probe is attached.
    let web_config = http::web_config(&config.http)?;
    let tcp = http::bind_tcp(config.http.listen).await?;
    let unix = http::bind_unix(&config.http.api_socket)?;
    let _socket_guard = RemoveOnDrop(config.http.api_socket.clone());
    let api_tcp = match config.http.api_listen {
        Some(addr) => Some((
            http::bind_tcp(addr).await?,
            config
                .http
                .api_token_file
                .as_deref()
                .map(http::BearerToken::read)
                .transpose()?,
        )),
        None => None,
    };

    let mut sensor = Sensor::load(&KernelOptions {
        btf: config.kernel.btf.clone(),
        flow_map_entries: config.kernel.flow_map_entries,
        file_map_entries: config.kernel.file_map_entries,
        pin_dir: config.kernel.pin_dir.clone(),
        disabled_probes: config.kernel.disable_probes.iter().map(|p| p.0).collect(),
        dns: config.dns.enabled,
    })?;
    release_freed_memory();
    for status in sensor.probes() {
        match &status.state {
            ProbeState::Attached => tracing::info!(probe = status.probe, "attached"),
            // Skipped as the admin asked: said, not an error.
            ProbeState::Skipped(reason)
                if config
                    .kernel
                    .disable_probes
                    .iter()
                    .any(|p| p.0 == status.probe)
                    || (!config.dns.enabled && status.probe.starts_with("cgroup:dns_")) =>
            {
                tracing::info!(probe = status.probe, %reason, "skipped");
            }
            ProbeState::Skipped(reason) => {
                tracing::error!(probe = status.probe, %reason, "skipped");
            }
        }
    }
    let metrics = Metrics::new(&config.metrics, config.networks());
    metrics.set_probes(sensor.probes());
    let registry = metrics.registry();
    let mut aggregator = Aggregator::new(
        &config,
        Box::new(ProcFs::new("/proc")),
        ProcessTable::new(crate::kernel::host::cgroup2_root()),
        metrics,
    )?;
    aggregator.restore_detection();
    if config.files.hash_paths {
        aggregator.hash_paths(crate::flow::path_hash::PathHasher::load_or_create(
            &config.files.hash_key_file,
        )?);
    }
    let reload_metrics = reload::ReloadMetrics::register(&registry);
    // The journal's last totals, before its writer opens it.
    aggregator.resume_from(agent::Baseline::read(&config.journal));
    let sinks = crate::sinks::Sinks::start(&config.alerts, &registry, &hostname())?;
    let to_sinks = sinks.clone();
    aggregator.on_alert(move |event| to_sinks.send(event));
    let source_file = source.file.clone();
    let overrides = source.overrides.clone();
    let journal = start_journal(&config, source, &aggregator, &registry)?;
    if let Some(journal) = &journal {
        let to_journal = journal.sender();
        aggregator.on_record(move |record| to_journal.send(record));
    }
    let http_metrics = http::HttpMetrics::register(&registry);
    let web = web_config
        .map(|c| http::Web::start(c, http_metrics))
        .transpose()?
        .map(Arc::new);
    let (agent_tx, agent_rx) = agent::channel();
    let reloading = tokio::spawn(reload::on_hangup(
        hangups,
        source_file,
        config.clone(),
        overrides,
        agent_tx.clone(),
        reload_metrics,
    ));
    let aggregating = std::thread::Builder::new()
        .name("aggregate".into())
        .spawn(move || aggregator.run(agent_rx, log_interval))
        .context("starting the aggregating thread")?;

    let health = Arc::new(Health::new(
        sensor.probes().to_vec(),
        config.agent.poll_interval,
    ));
    let state = http::AppState {
        health: Arc::clone(&health),
        agent: agent_tx.clone(),
        registry,
    };
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let interval = config.agent.poll_interval;
    let paths = sensor
        .path_ring(WalkedPath::from_event)
        .context("the file path ring was already taken")?
        .context("starting the file path thread")?;
    let mut watch = Watch {
        journal: journal.as_ref().map(JournalThread::health),
        unrepaired: std::collections::HashSet::new(),
        health,
    };
    let poller = std::thread::Builder::new()
        .name("poll".into())
        .spawn(move || {
            poll_loop(
                &mut sensor,
                &paths,
                &agent_tx,
                interval,
                &stop_rx,
                &mut watch,
            )
        })
        .context("starting the poll thread")?;

    tracing::info!(
        metrics = %config.http.listen,
        api = %config.http.api_socket.display(),
        api_tcp = ?config.http.api_listen,
        tls = web.as_ref().is_some_and(|w| w.tls()),
        basic_auth = web.as_ref().is_some_and(|w| !w.current().config.users.is_empty()),
        "serving"
    );
    let (stop_serving, _) = tokio::sync::broadcast::channel::<()>(1);
    let until_stopped = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut on_stop = tx.subscribe();
        async move {
            let _ = on_stop.recv().await;
        }
    };
    let guard = |basic_auth| {
        web.as_ref().map(|web| http::Guard {
            web: Arc::clone(web),
            basic_auth,
        })
    };
    let mut servers = tokio::task::JoinSet::new();
    let limits = http::Limits::of(&config.http);
    let tcp_server = http::serve(
        tcp,
        http::metrics_router(state.clone()),
        guard(true),
        "metrics",
        limits,
        until_stopped(&stop_serving),
    );
    servers.spawn(async move { tcp_server.await.context("metrics listener") });
    let unix_server = http::serve_unix(
        unix,
        http::api_router(state.clone()),
        limits,
        until_stopped(&stop_serving),
    );
    servers.spawn(async move { unix_server.await.context("API socket listener") });
    if let Some((listener, token)) = api_tcp {
        // The bearer token and basic auth would both need the Authorization header: with a
        // token, the token is the API's authentication (TLS and headers still apply).
        let (router, basic_auth) = match token {
            Some(token) => (http::tcp_api_router(state.clone(), token), false),
            None => (http::api_router(state.clone()), true),
        };
        let server = http::serve(
            listener,
            router,
            guard(basic_auth),
            "api",
            limits,
            until_stopped(&stop_serving),
        );
        servers.spawn(async move { server.await.context("TCP API listener") });
    }
    drop(state);

    shutdown_signal().await;
    tracing::info!("stopping");
    if let Some(journal) = &journal {
        journal.closing();
    }
    let _ = stop_serving.send(());
    let _ = stop_tx.send(());
    // Its sender to the aggregator goes with it.
    reloading.abort();
    let _ = reloading.await;
    let polled = tokio::task::spawn_blocking(move || poller.join())
        .await
        .context("joining the poll thread")?;
    match polled {
        Ok(result) => result?,
        Err(_) => anyhow::bail!("the poll thread panicked"),
    }
    while let Some(served) = servers.join_next().await {
        served.context("joining a listener")??;
    }
    // Every sender is gone now: the aggregator closes the last interval and returns.
    let aggregated = tokio::task::spawn_blocking(move || aggregating.join())
        .await
        .context("joining the aggregating thread")?;
    if aggregated.is_err() {
        anyhow::bail!("the aggregating thread panicked");
    }
    // After the last interval and its alerts: the stop record, synced.
    if let Some(journal) = journal {
        tokio::task::spawn_blocking(move || journal.stop(SystemTime::now()))
            .await
            .context("joining the journal thread")?;
    }
    // What the last interval raised or resolved reaches the sinks before the agent exits.
    sinks.flush(Duration::from_secs(5)).await;
    Ok(())
}

/// The journal's writer thread, with its start record, when `[journal]` is enabled. Its
/// metrics are registered either way.
fn start_journal(
    config: &Config,
    source: ConfigSource,
    aggregator: &Aggregator,
    registry: &prometheus::Registry,
) -> anyhow::Result<Option<JournalThread>> {
    let metrics = JournalMetrics::register(registry);
    let loose = crate::journal::permissions::register_metric(registry);
    if !config.journal.enabled {
        return Ok(None);
    }
    // Before the writer opens it (which makes a missing directory 0700).
    let found = crate::journal::permissions::warn_loose(&config.journal.dir);
    loose.set(i64::try_from(found).unwrap_or(i64::MAX));
    let start = StartRecord {
        at_ms: unix_ms(SystemTime::now()),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        hostname: hostname(),
        config_source: source.path,
        config_toml: source.text,
        detect_state: aggregator.restored_detection_state(),
    };
    let thread = JournalThread::start(config.journal.clone(), start, metrics)
        .context("starting the journal thread")?;
    Ok(Some(thread))
}

/// This host's name, the `instance` of its alerts in Alertmanager.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Hands the memory freed after loading (the parsed BTF of the whole kernel, tens of MiB)
/// back to the system: glibc keeps freed heap otherwise, and the agent's RSS would carry its
/// start-up peak for its whole life.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Each interval's sums, in the log at debug level.
fn log_interval(interval: &Interval) {
    let sent: u64 = interval.flows.iter().map(|f| f.bytes_sent).sum();
    let read: u64 = interval.files.iter().map(|f| f.bytes_read).sum();
    let written: u64 = interval.files.iter().map(|f| f.bytes_written).sum();
    tracing::debug!(
        start_ms = interval.start_ms,
        end_ms = interval.end_ms,
        flows = interval.flows.len(),
        files = interval.files.len(),
        bytes_sent = sent,
        bytes_read = read,
        bytes_written = written,
        "interval"
    );
}

/// What the poll thread checks for tampering besides the kernel side (the journal), and what
/// it reported.
struct Watch {
    journal: Option<JournalHealth>,
    /// What the last check found and could not repair: reported once, then tried again each
    /// poll without a report (or a log line) per poll, until it is repaired.
    unrepaired: std::collections::HashSet<String>,
    /// What `/healthz` answers: the polls as they come, the probes found detached.
    health: Arc<Health>,
}

impl Watch {
    /// The tamper checks of one poll: the kernel side (repaired where it can be) and the
    /// journal; one report per finding, each logged.
    fn check(&mut self, sensor: &mut Sensor) -> Vec<TamperReport> {
        let now = SystemTime::now();
        let mut unrepaired = std::collections::HashSet::new();
        let mut reports = Vec::new();
        let mut detached = std::collections::BTreeSet::new();
        for finding in sensor.check_integrity() {
            if finding.repair.is_err() {
                detached.extend(finding.tampered.detached_probe());
                let subject = finding.tampered.subject();
                let reported = self.unrepaired.contains(&subject);
                unrepaired.insert(subject);
                if reported {
                    continue;
                }
            }
            reports.push(kernel_report(now, &finding));
        }
        self.unrepaired = unrepaired;
        self.health.detached(detached);
        if let Some(failure) = self.journal.as_mut().and_then(JournalHealth::new_failure) {
            tracing::error!(
                dir = %failure.dir.display(),
                error = %failure.error,
                "tamper check: the journal stopped taking records"
            );
            reports.push(TamperReport {
                now,
                tamper: Tamper {
                    subject: format!("journal {}", failure.dir.display()),
                    summary: format!(
                        "the journal {} stopped taking records: {}",
                        failure.dir.display(),
                        failure.error
                    ),
                    description: format!(
                        "Writing to the journal {} failed ({}). Counting, metrics and alerts \
                         go on; records wait in memory (up to {} MiB) and are written, in \
                         order, once writing works again; beyond that they are counted in \
                         exfil_sensor_journal_dropped_records_total. \
                         exfil_sensor_journal_writable is 0 while it fails.",
                        failure.dir.display(),
                        failure.error,
                        crate::journal::live::BACKLOG_BYTES >> 20
                    ),
                },
                detached_probe: None,
                repaired: None,
            });
        }
        reports
    }
}

/// A kernel finding as a `tamper` alert's report, logged.
fn kernel_report(now: SystemTime, finding: &Finding) -> TamperReport {
    let tampered = &finding.tampered;
    match &finding.repair {
        Ok(()) => tracing::error!(
            what = %tampered.subject(),
            repaired = true,
            "tamper check: {}",
            tampered.summary()
        ),
        Err(why) => tracing::error!(
            what = %tampered.subject(),
            repaired = false,
            repair_error = %why,
            "tamper check: {}",
            tampered.summary()
        ),
    }
    TamperReport {
        now,
        tamper: Tamper {
            subject: tampered.subject(),
            summary: tampered.summary(),
            description: finding.description(),
        },
        detached_probe: tampered.detached_probe(),
        repaired: finding.repair.is_ok().then(|| tampered.repair_label()),
    }
}

/// Reads the kernel every `interval` until `stop` fires, then once more so the last bytes
/// are counted, handing each read to the aggregator; each poll also runs the tamper checks.
fn poll_loop(
    sensor: &mut Sensor,
    paths: &PathRing<WalkedPath>,
    agent: &tokio::sync::mpsc::Sender<Message>,
    interval: Duration,
    stop: &mpsc::Receiver<()>,
    watch: &mut Watch,
) -> anyhow::Result<()> {
    let mut adopt = sensor.reused_maps();
    let mut stopping = false;
    // Exits drained after the last read: this poll's.
    let mut carried = Vec::new();
    loop {
        let started = Instant::now();
        // Exits before the maps: a process's keys are deleted below only once a read that
        // followed its exit has taken its last bytes.
        let mut events = std::mem::take(&mut carried);
        events.extend(sensor.drain_process_events());
        let read = sensor.read();
        // And the forks and execs that came during the read, so that a process that started
        // and sent in between is named by its exec, not by its parent (`agent::split_late`).
        let (late, exits) = agent::split_late(sensor.drain_process_events());
        events.extend(late);
        carried = exits;
        // Paths after the maps: a program sends a file's path before it first adds bytes for
        // it, so every file in this read has its path in what the path thread kept plus a
        // last drain now (taken before the read, a file first touched in between had its bytes
        // counted, and its class fixed in the metrics, before its path arrived).
        let paths = paths.take();
        let dns = sensor.drain_dns_answers();
        for answer in &dns {
            tracing::debug!(
                name = %answer.name,
                pid = ?answer.pid,
                addresses = answer.addrs.len(),
                "DNS answer"
            );
        }
        // A path's device may be newly mounted: read the mounts afresh when paths come.
        let mounts = (!paths.is_empty()).then(Mounts::read);
        let (sums, dead) = match read {
            Ok(sums) => {
                let dead = DeadKeys::of(&sums, &agent::exited(&events));
                (sums, dead)
            }
            Err(e) => {
                // The events and paths still go: they name processes and files.
                tracing::error!(error = %e, "reading the kernel maps failed");
                (KernelSums::default(), DeadKeys::default())
            }
        };
        let input = PollInput {
            now: SystemTime::now(),
            events,
            paths,
            mounts,
            sums,
            took: started.elapsed(),
            adopt,
            dns,
        };
        adopt = false;
        if agent.blocking_send(Message::Poll(Box::new(input))).is_err() {
            anyhow::bail!("the aggregating thread stopped");
        }
        watch.health.polled(Instant::now());
        if !dead.is_empty()
            && let Err(e) = sensor.forget(&dead)
        {
            tracing::warn!(error = %e, "deleting exited processes' keys failed");
        }
        if stopping {
            return Ok(());
        }
        let reports = watch.check(sensor);
        if !reports.is_empty() && agent.blocking_send(Message::Tamper(reports)).is_err() {
            anyhow::bail!("the aggregating thread stopped");
        }
        let wait = interval.saturating_sub(started.elapsed());
        match stop.recv_timeout(wait) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => stopping = true,
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = ctrl_c.await;
        }
    }
}

/// Removes the API socket file when the daemon stops.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

//! `exfil-sensor run`: bind the listeners, load the sensor, poll it until told to stop.

use std::{
    path::PathBuf,
    sync::{Arc, mpsc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::{
    config::Config,
    flow::{
        FlowTable,
        files::FileTable,
        identity::ProcFs,
        paths::Mounts,
        process::{Identities, ProcessTable},
    },
    http::{self, View},
    kernel::{KernelOptions, ProbeState, Sensor},
    metrics::Metrics,
};

pub fn run(config: Config) -> anyhow::Result<()> {
    // Fail on missing privileges before anything else, with one line that says so.
    crate::kernel::host::check_privileges()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Bind first: a port in use is reported before any probe is attached.
    let tcp = http::bind_tcp(config.http.listen).await?;
    let unix = http::bind_unix(&config.http.api_socket)?;
    let _socket_guard = RemoveOnDrop(config.http.api_socket.clone());

    let mut sensor = Sensor::load(&KernelOptions {
        btf: config.kernel.btf.clone(),
        flow_map_entries: config.kernel.flow_map_entries,
        file_map_entries: config.kernel.file_map_entries,
        pin_dir: config.kernel.pin_dir.clone(),
    })?;
    for status in sensor.probes() {
        match &status.state {
            ProbeState::Attached => tracing::info!(probe = status.probe, "attached"),
            ProbeState::Skipped(reason) => {
                tracing::error!(probe = status.probe, %reason, "skipped");
            }
        }
    }
    let mut metrics = Metrics::new(config.metrics.destinations_per_service);
    metrics.set_probes(sensor.probes());
    let registry = metrics.registry();
    let (view_tx, view_rx) = watch::channel(Arc::new(View::default()));

    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let interval = config.agent.poll_interval;
    let poller = std::thread::Builder::new()
        .name("poll".into())
        .spawn(move || poll_loop(&mut sensor, &mut metrics, &view_tx, interval, &stop_rx))
        .context("starting the poll thread")?;

    tracing::info!(
        metrics = %config.http.listen,
        api = %config.http.api_socket.display(),
        "serving"
    );
    let shutdown = shutdown_signal();
    let (stop_serving, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut on_stop = stop_serving.subscribe();
    let tcp_server = axum::serve(tcp, http::metrics_router(view_rx.clone(), registry.clone()))
        .with_graceful_shutdown(async move {
            let _ = on_stop.recv().await;
        });
    let mut on_stop = stop_serving.subscribe();
    let unix_server = axum::serve(unix, http::api_router(view_rx, registry))
        .with_graceful_shutdown(async move {
            let _ = on_stop.recv().await;
        });
    let tcp_task = tokio::spawn(async move { tcp_server.await });
    let unix_task = tokio::spawn(async move { unix_server.await });

    shutdown.await;
    tracing::info!("stopping");
    let _ = stop_serving.send(());
    let _ = stop_tx.send(());
    let polled = tokio::task::spawn_blocking(move || poller.join())
        .await
        .context("joining the poll thread")?;
    match polled {
        Ok(result) => result?,
        Err(_) => anyhow::bail!("the poll thread panicked"),
    }
    tcp_task.await.context("metrics listener")??;
    unix_task.await.context("API listener")??;
    Ok(())
}

/// Reads the kernel every `interval` until `stop` fires, then once more so the last bytes
/// are published.
fn poll_loop(
    sensor: &mut Sensor,
    metrics: &mut Metrics,
    view: &watch::Sender<Arc<View>>,
    interval: Duration,
    stop: &mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let proc_fs = ProcFs::new("/proc");
    let mut processes = ProcessTable::new(crate::kernel::host::cgroup2_root());
    let mut table = FlowTable::default();
    let mut files = FileTable::default();
    let mut stopping = false;
    loop {
        let started = Instant::now();
        // Events first: a process that sent and exited since the last poll is named by them.
        processes.apply(SystemTime::now(), &sensor.drain_process_events());
        let paths = sensor.drain_file_paths();
        if !paths.is_empty() {
            // A path's device may be newly mounted: read the mounts afresh when paths come.
            files.learn_paths(&paths, &Mounts::read());
        }
        let identities = Identities {
            live: &proc_fs,
            events: &processes,
        };
        match sensor.read() {
            Ok(sums) => {
                table.apply(
                    SystemTime::now(),
                    &sums.flows,
                    &sums.flow_overflow,
                    &identities,
                );
                files.apply(&sums.file_reads, &sums.file_overflow, &identities);
                metrics.observe(&table, &sums, started.elapsed());
                view.send_replace(Arc::new(View {
                    probes: sensor.probes().to_vec(),
                    flows: table.records(),
                    files: files.records(),
                }));
            }
            Err(e) => tracing::error!(error = %e, "reading the kernel maps failed"),
        }
        if stopping {
            return Ok(());
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

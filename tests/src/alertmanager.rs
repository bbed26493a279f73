//! A real Alertmanager (Debian's prometheus-alertmanager) on a free loopback port, with its
//! state in a directory of its own; killed on drop. [`shipped_alertmanager_config`] is
//! deploy/alertmanager/alertmanager.yml as shipped, its receivers' webhooks pointed at a
//! receiver of the test.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::http::{http_get_tcp, http_post_tcp};

/// Where the shipped example's webhook receivers post (a placeholder for the reader's own).
const SHIPPED_WEBHOOKS: &str = "http://127.0.0.1:9095/";

/// deploy/alertmanager/alertmanager.yml, routes, inhibit rules and receivers as shipped, with
/// only its webhook base address replaced by `webhook`'s (the paths, `/security` and
/// `/operations`, kept): the test's receiver, not whatever listens on 9095 here. Fails if
/// any receiver URL of the file is not the placeholder (it would post somewhere real).
pub fn shipped_alertmanager_config(webhook: SocketAddr) -> anyhow::Result<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/alertmanager/alertmanager.yml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let urls = text
        .lines()
        .filter(|l| l.trim_start().starts_with("- url:"))
        .count();
    let placeholders = text.matches(SHIPPED_WEBHOOKS).count();
    ensure!(
        urls > 0 && urls == placeholders,
        "{}: {urls} receiver URLs, {placeholders} of them on {SHIPPED_WEBHOOKS}",
        path.display()
    );
    Ok(text.replace(SHIPPED_WEBHOOKS, &format!("http://{webhook}/")))
}

pub struct Alertmanager {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Alertmanager {
    /// Starts it on `config` (YAML text) and waits until it is ready (20 s at most).
    pub fn start(config: &str) -> anyhow::Result<Self> {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("exfil-e2e-alertmanager-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("alertmanager.yml");
        std::fs::write(&config_path, config)?;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::fs::File::create(dir.join("log"))?;
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("prometheus-alertmanager (Debian package; `cargo xtask setup` installs it)")?;
        let mut am = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get_tcp(am.addr, "/-/ready").is_err() {
            if let Ok(Some(status)) = am.child.try_wait() {
                bail!("Alertmanager exited ({status}):\n{}", am.log());
            }
            if Instant::now() > deadline {
                bail!("Alertmanager did not become ready:\n{}", am.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(am)
    }

    /// What it logged (stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// `GET /api/v2/alerts`: every alert it holds, with its state and receivers.
    pub fn alerts(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let body = http_get_tcp(self.addr, "/api/v2/alerts")?;
        serde_json::from_str(&body).context("Alertmanager's JSON")
    }

    /// `POST /api/v2/alerts`: what Prometheus sends it, `alerts` a JSON array.
    pub fn post_alerts(&self, alerts: &serde_json::Value) -> anyhow::Result<()> {
        let (status, body) = http_post_tcp(self.addr, "/api/v2/alerts", &alerts.to_string())?;
        ensure!(
            status == 200,
            "POST /api/v2/alerts answered {status}: {body}"
        );
        Ok(())
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

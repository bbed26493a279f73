//! `[detect]` in the config: each rule's thresholds, with the defaults the sources
//! argue for, and the profiles of services whose normal work looks like exfiltration.

use std::{path::PathBuf, time::Duration};

use bytesize::ByteSize;
use ipnet::IpNet;
use serde::Deserialize;

const MIB: u64 = 1 << 20;

/// A path, or `""` for none: TOML has no null, and an empty path names no file.
fn empty_is_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let path = PathBuf::deserialize(d)?;
    Ok((!path.as_os_str().is_empty()).then_some(path))
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Learning and baselines, kept across restarts; none (`""` in the file) = start afresh
    /// each time.
    #[serde(deserialize_with = "empty_is_none")]
    pub state_file: Option<PathBuf>,
    /// An episode with no growth for this long is resolved.
    #[serde(with = "humantime_serde")]
    pub quiet: Duration,
    /// Alerts the API keeps (the oldest resolved ones go first).
    pub max_alerts: usize,
    pub burst: BurstConfig,
    pub lineage: LineageConfig,
    pub new_destination: NewDestinationConfig,
    pub baseline: BaselineConfig,
    pub slow_leak: SlowLeakConfig,
    pub budget: BudgetConfig,
    /// Services whose normal work would otherwise look like exfiltration.
    pub profile: Vec<Profile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BurstConfig {
    pub enabled: bool,
    /// One service to one external destination within `window`.
    pub bytes: ByteSize,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// One service to all external destinations together within `spray_window`.
    pub spray_bytes: ByteSize,
    #[serde(with = "humantime_serde")]
    pub spray_window: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LineageConfig {
    pub enabled: bool,
    /// Classes whose bulk reads, then bulk sends, are an alert.
    pub classes: Vec<String>,
    /// Classes of small files (keys, password hashes): a send as large as the file read is.
    pub secret_classes: Vec<String>,
    /// A send this large after a read of `classes` fires ...
    pub bytes: ByteSize,
    /// ... and so does one at least this fraction of what was read ...
    pub fraction: f64,
    /// ... when it is at least this large.
    pub min_bytes: ByteSize,
    /// How long after its last read a process (and its shell or service) stays tainted.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long a file written by a tainted process stays tainted (the archive uploaded
    /// tomorrow).
    #[serde(with = "humantime_serde")]
    pub file_window: Duration,
    /// At most this many tainted files; beyond it the oldest are forgotten.
    pub max_files: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NewDestinationConfig {
    pub enabled: bool,
    /// From the first start of the agent (kept in the state file): destinations seen in this
    /// time are the known ones.
    #[serde(with = "humantime_serde")]
    pub learning: Duration,
    /// A service sends this much to an external destination it never used.
    pub bytes: ByteSize,
    /// Destinations remembered per service; the least recently used go first.
    pub max_per_service: usize,
    /// DNS name suffixes (`backup.example.net`: itself and every name under it) that are
    /// never new: a destination the host's DNS answers named under one is known to every
    /// service.
    pub allow_names: Vec<String>,
    /// DNS name suffixes that always alert: any byte a service sends to a destination named
    /// under one is a `new_destination` alert, learning, known destinations, profiles and
    /// `allow_names` notwithstanding.
    pub deny_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    pub enabled: bool,
    /// An hour above median + sigma × (1.4826 × MAD) of the same hour ...
    pub sigma: f64,
    /// ... and above this many bytes.
    pub floor: ByteSize,
    /// Days of samples before the hour-of-day baseline counts (hour-of-week once it has this
    /// many weeks).
    pub min_days: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlowLeakConfig {
    pub enabled: bool,
    /// CUSUM slack and threshold, in σ of the daily external bytes.
    pub k: f64,
    pub h: f64,
    /// σ is at least this: a quiet service's σ of 0 would make every byte a leak.
    pub min_sigma: ByteSize,
    pub min_days: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    pub enabled: bool,
    /// Bytes a profile with an allowlist may send elsewhere in a day before it is an alert
    /// (so that a DNS lookup is not one).
    pub outside_allowlist: ByteSize,
}

/// What a service is expected to do. A process matches when its service matches one of
/// `services` (globs; empty = any) and its comm is one of `comms` (empty = any).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub comms: Vec<String>,
    /// File classes it reads for its work: no lineage taint from them.
    #[serde(default)]
    pub reads: Vec<String>,
    /// File classes whose contents it hands to local clients (a database's rows): a process
    /// that receives bytes from it over a loopback connection is tainted as if it had read
    /// that many bytes of the class (`lineage`).
    #[serde(default)]
    pub serves: Vec<String>,
    /// Where it may send: sending elsewhere is a `budget` alert, and these destinations are
    /// left out of the other rules. Empty and `allow_internal = false`: no allowlist.
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// DNS name suffixes it may send to, like `allow`: a destination the host's DNS answers
    /// named under one (`backup.example.net` stands for `eu1.backup.example.net` too).
    #[serde(default)]
    pub allow_names: Vec<String>,
    /// DNS name suffixes it must never send to: any byte to a destination named under one is
    /// a `budget` alert, whatever `allow`, `allow_internal` or `allow_names` say.
    #[serde(default)]
    pub deny_names: Vec<String>,
    /// Internal networks (`[networks]`) are allowed too.
    #[serde(default)]
    pub allow_internal: bool,
    /// Bytes it may send per day (UTC), all non-loopback destinations together.
    #[serde(default)]
    pub daily_budget: Option<ByteSize>,
    /// It talks to many hosts, new ones every day (a mail relay): no `new_destination` and
    /// no spraying `burst` for it (a burst to one destination still counts).
    #[serde(default)]
    pub many_destinations: bool,
}

impl DetectConfig {
    /// Every name suffix list, with its config key (`detect.profile[1].allow_names`).
    pub fn name_lists(&self) -> Vec<(String, &[String])> {
        let mut lists = vec![
            (
                "detect.new_destination.allow_names".to_owned(),
                self.new_destination.allow_names.as_slice(),
            ),
            (
                "detect.new_destination.deny_names".to_owned(),
                self.new_destination.deny_names.as_slice(),
            ),
        ];
        for (i, p) in self.profile.iter().enumerate() {
            lists.push((format!("detect.profile[{i}].allow_names"), &p.allow_names));
            lists.push((format!("detect.profile[{i}].deny_names"), &p.deny_names));
        }
        lists
    }

    /// The config as detection compares with it: name suffixes in lower case, as DNS names
    /// come.
    pub fn normalized(&self) -> Self {
        let lower = |list: &[String]| {
            list.iter()
                .map(|s| crate::dns::suffix::normalize(s))
                .collect()
        };
        let mut config = self.clone();
        config.new_destination.allow_names = lower(&self.new_destination.allow_names);
        config.new_destination.deny_names = lower(&self.new_destination.deny_names);
        for p in &mut config.profile {
            p.allow_names = lower(&p.allow_names);
            p.deny_names = lower(&p.deny_names);
        }
        config
    }
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            state_file: Some(PathBuf::from("/var/lib/exfil-sensor/detect-state.json")),
            quiet: Duration::from_secs(600),
            max_alerts: 10_000,
            burst: BurstConfig::default(),
            lineage: LineageConfig::default(),
            new_destination: NewDestinationConfig::default(),
            baseline: BaselineConfig::default(),
            slow_leak: SlowLeakConfig::default(),
            budget: BudgetConfig::default(),
            profile: shipped_profiles(),
        }
    }
}

impl Default for BurstConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bytes: ByteSize::b(50 * MIB),
            window: Duration::from_secs(300),
            spray_bytes: ByteSize::b(200 * MIB),
            spray_window: Duration::from_secs(3600),
        }
    }
}

impl Default for LineageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            classes: vec!["mail_store".into(), "records".into()],
            secret_classes: vec!["secrets".into()],
            bytes: ByteSize::b(10 * MIB),
            fraction: 0.5,
            min_bytes: ByteSize::b(MIB),
            window: Duration::from_secs(3600),
            file_window: Duration::from_secs(86_400),
            max_files: 10_000,
        }
    }
}

impl Default for NewDestinationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            learning: Duration::from_secs(7 * 86_400),
            bytes: ByteSize::b(MIB),
            max_per_service: 10_000,
            allow_names: Vec::new(),
            deny_names: Vec::new(),
        }
    }
}

impl Default for BaselineConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sigma: 4.0,
            floor: ByteSize::b(20 * MIB),
            min_days: 4,
        }
    }
}

impl Default for SlowLeakConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            k: 0.5,
            h: 5.0,
            min_sigma: ByteSize::b(4 * MIB),
            min_days: 4,
        }
    }
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            outside_allowlist: ByteSize::b(64 << 10),
        }
    }
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// The profiles `config/default.toml` ships (the two must agree: a test says so).
fn shipped_profiles() -> Vec<Profile> {
    let profile = |name: &str, services: &[&str], comms: &[&str], reads: &[&str]| Profile {
        name: name.to_owned(),
        services: strings(services),
        comms: strings(comms),
        reads: strings(reads),
        serves: Vec::new(),
        allow: Vec::new(),
        allow_names: Vec::new(),
        deny_names: Vec::new(),
        allow_internal: false,
        daily_budget: None,
        many_destinations: false,
    };
    vec![
        Profile {
            many_destinations: true,
            ..profile(
                "postfix",
                &["postfix*.service", "postfix"],
                &[],
                &["mail_store", "secrets"],
            )
        },
        profile(
            "dovecot",
            &["dovecot*.service", "dovecot"],
            &[],
            &["mail_store", "secrets"],
        ),
        Profile {
            serves: strings(&["records"]),
            ..profile(
                "postgresql",
                &["postgresql*.service", "postgres"],
                &[],
                &["records", "secrets"],
            )
        },
        profile(
            "sshd",
            &[],
            &["sshd", "sshd-session", "sshd-auth"],
            &["secrets"],
        ),
        Profile {
            allow_internal: true,
            ..profile(
                "backup",
                &[],
                &["rsync", "borg", "restic"],
                &["mail_store", "records", "secrets"],
            )
        },
    ]
}

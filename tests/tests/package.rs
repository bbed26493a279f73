//! The Debian package, installed for real with dpkg (root). `cargo xtask test` builds it from
//! the debug agent and names it in `EXFIL_SENSOR_DEB`. What lands where, byte for byte; the
//! system user; an edited conffile kept by a reinstall and by remove, taken by purge; nothing
//! of the package left after purge. A guard purges whatever happens, and removes the user
//! and group if this test made them (the package keeps them on purge, as Debian packages
//! do), so the machine is left as found.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use exfil_tests::require_root;

const PACKAGE: &str = "exfil-sensor";
const CONFFILE: &str = "/etc/exfil-sensor/config.toml";
/// The kernel pin directory of the unit's agent: the package touches it only where systemd
/// runs the unit (postrm), never here.
const PIN_DIR: &str = "/sys/fs/bpf/exfil-sensor";
/// What the unit's agent writes and the package's purge deletes (remove keeps them): its
/// `StateDirectory` (the journal) and `LogsDirectory` (json_lines alerts).
const EVIDENCE_DIRS: [&str; 2] = ["/var/lib/exfil-sensor", "/var/log/exfil-sensor"];

fn deb() -> PathBuf {
    let path = std::env::var_os("EXFIL_SENSOR_DEB")
        .map(PathBuf::from)
        .expect(
            "EXFIL_SENSOR_DEB is not set: run the tests with `cargo xtask test`, which builds the \
         package (or set it to the .deb `cargo xtask package` prints)",
        );
    assert!(
        path.is_file(),
        "EXFIL_SENSOR_DEB: no file {}",
        path.display()
    );
    path
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Runs `program`; returns (success, stdout, stderr).
fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `program` and asserts it succeeds; returns its stdout.
fn ok(program: &str, args: &[&str]) -> String {
    let (success, stdout, stderr) = run(program, args);
    assert!(success, "{program} {args:?} failed:\n{stdout}{stderr}");
    stdout
}

/// `${Status}` of the package as dpkg knows it; None when dpkg has no record of it.
fn status() -> Option<String> {
    let (known, text, _) = run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    known.then_some(text)
}

/// The passwd line of the `exfil-sensor` user, split into its fields.
fn passwd_entry() -> Option<Vec<String>> {
    let (found, line, _) = run("getent", &["passwd", PACKAGE]);
    found.then(|| line.trim().split(':').map(str::to_owned).collect())
}

fn group_exists() -> bool {
    run("getent", &["group", PACKAGE]).0
}

/// Purges the package on drop, and removes the user and group when the test made them.
struct Installed {
    made_user: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if status().is_some() {
            let (purged, stdout, stderr) = run("dpkg", &["--purge", PACKAGE]);
            if !purged {
                eprintln!("cleanup: dpkg --purge {PACKAGE} failed:\n{stdout}{stderr}");
            }
        }
        if self.made_user {
            // userdel takes the user's own group too (USERGROUPS_ENAB); groupdel in case not.
            let _ = run("userdel", &[PACKAGE]);
            if group_exists() {
                let _ = run("groupdel", &[PACKAGE]);
            }
        }
    }
}

/// Each installed file that comes from the tree unchanged, with its source.
const SHIPPED_AS_IS: &[(&str, &str)] = &[
    (CONFFILE, "sensor/config/default.toml"),
    (
        "/usr/lib/systemd/system/exfil-sensor.service",
        "deploy/systemd/exfil-sensor.service",
    ),
    (
        "/usr/share/exfil-sensor/prometheus/rules.yml",
        "deploy/prometheus/rules.yml",
    ),
    (
        "/usr/share/exfil-sensor/prometheus/rules_test.yml",
        "deploy/prometheus/rules_test.yml",
    ),
    (
        "/usr/share/exfil-sensor/alertmanager/alertmanager.yml",
        "deploy/alertmanager/alertmanager.yml",
    ),
    (
        "/usr/share/exfil-sensor/grafana/exfil-sensor.json",
        "deploy/grafana/exfil-sensor.json",
    ),
    ("/usr/share/doc/exfil-sensor/README.md", "README.md"),
    (
        "/usr/share/doc/exfil-sensor/copyright",
        "deploy/debian/copyright",
    ),
];

/// The installed agent run as the unit runs it (PID 1 here is not systemd): as the package's
/// user, with the installed unit's capabilities and nothing else, its API socket in a
/// directory of its own as `RuntimeDirectory=` makes. Its listeners bind (a socket it could
/// not hand to root once stopped every start); then a BTF file that does not exist stops it
/// before anything is loaded into the kernel (capabilities.rs runs the agent in full).
fn the_units_user_gets_as_far_as_the_kernel(user: &[String]) {
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/exfil-sensor.service")
        .expect("the installed unit");
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities=")
        .split_whitespace()
        .map(|c| format!("+{}", c.to_lowercase().trim_start_matches("cap_")))
        .collect::<Vec<_>>()
        .join(",");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("package-runtime-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let dir_str = dir.to_str().expect("a UTF-8 path");
    ok("chown", &[&format!("{PACKAGE}:{PACKAGE}"), dir_str]);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\napi_socket = \"{dir_str}/api.sock\"\n\
             [kernel]\nbtf = \"/nonexistent/vmlinux\"\n[journal]\nenabled = false\n"
        ),
    )
    .expect("write config");
    let (started, _, stderr) = run(
        "setpriv",
        &[
            &format!("--reuid={}", user[2]),
            &format!("--regid={}", user[3]),
            "--clear-groups",
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
            "--",
            "/usr/bin/exfil-sensor",
            "run",
            "--config",
            config.to_str().expect("a UTF-8 path"),
        ],
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert!(
        !started && stderr.contains("cannot read BTF from /nonexistent/vmlinux"),
        "the agent should stop at the BTF file, after binding its listeners:\n{stderr}"
    );
}

/// What installing the package enables: the unit's `WantedBy=multi-user.target` link, made
/// by deb-systemd-helper even where systemd is not running.
const ENABLED_LINK: &str = "/etc/systemd/system/multi-user.target.wants/exfil-sensor.service";

#[test]
fn the_deb_installs_the_agent_and_purge_leaves_nothing_but_the_user() {
    require_root();
    let deb = deb();
    let deb = deb.to_str().expect("a UTF-8 path");
    if status().is_some() {
        ok("dpkg", &["--purge", PACKAGE]);
    }
    for dir in EVIDENCE_DIRS {
        assert!(
            !Path::new(dir).exists(),
            "{dir} exists without the package (left by `cargo xtask run`, whose default \
             journal is there?): this test's purge would delete it; move it away first"
        );
    }
    let pins_before = Path::new(PIN_DIR).exists();
    let guard = Installed {
        made_user: passwd_entry().is_none(),
    };

    ok("dpkg", &["-i", deb]);
    assert_eq!(status().as_deref(), Some("install ok installed"));

    // The agent runs, is this version, and accepts the config it is installed with, which is
    // its embedded default.
    let version = ok("/usr/bin/exfil-sensor", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("exfil-sensor {}", env!("CARGO_PKG_VERSION"))
    );
    ok("/usr/bin/exfil-sensor", &["check-config", CONFFILE]);
    let default = ok("/usr/bin/exfil-sensor", &["config", "default"]);
    assert_eq!(
        default,
        std::fs::read_to_string(CONFFILE).expect("the conffile")
    );

    for (installed, source) in SHIPPED_AS_IS {
        let installed_bytes =
            std::fs::read(installed).unwrap_or_else(|e| panic!("{installed}: {e}"));
        assert!(
            installed_bytes == std::fs::read(repo(source)).expect("the source file"),
            "{installed} differs from {source}"
        );
    }
    let conffiles = ok("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    let conffiles: Vec<&str> = conffiles
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(conffiles, [CONFFILE]);

    // The unit's user: a system user with no login, its home the unit's StateDirectory, in
    // its own group.
    let user = passwd_entry().expect("the exfil-sensor user");
    let uid: u32 = user[2].parse().expect("a uid");
    assert!(uid < 1000, "a system uid (below UID_MIN 1000): {user:?}");
    assert_eq!(user[5], "/var/lib/exfil-sensor", "{user:?}");
    assert_eq!(user[6], "/usr/sbin/nologin", "{user:?}");
    let group = ok("getent", &["group", PACKAGE]);
    assert_eq!(group.trim().split(':').nth(2), Some(user[3].as_str()));
    assert!(
        Path::new(ENABLED_LINK).is_symlink(),
        "{ENABLED_LINK}: the unit is enabled on install"
    );
    the_units_user_gets_as_far_as_the_kernel(&user);

    // What the agent would have written, in the unit's directories, as the unit's user.
    let evidence = [
        "/var/lib/exfil-sensor/journal/evidence",
        "/var/log/exfil-sensor/alerts.jsonl",
    ];
    for file in evidence {
        std::fs::create_dir_all(Path::new(file).parent().expect("a directory")).expect("mkdir");
        std::fs::write(file, "evidence\n").expect("write evidence");
    }
    for dir in EVIDENCE_DIRS {
        ok("chown", &["-R", &format!("{PACKAGE}:{PACKAGE}"), dir]);
    }

    // An edited config survives a reinstall (an upgrade to the same version) and a remove.
    let mut edited = std::fs::read_to_string(CONFFILE).expect("the conffile");
    edited.push_str("# edited by tests/tests/package.rs\n");
    std::fs::write(CONFFILE, &edited).expect("edit the conffile");
    ok("dpkg", &["-i", deb]);
    assert_eq!(std::fs::read_to_string(CONFFILE).ok(), Some(edited.clone()));
    assert_eq!(
        passwd_entry().as_ref().map(|u| &u[2]),
        Some(&user[2]),
        "the reinstall keeps the user"
    );

    ok("dpkg", &["-r", PACKAGE]);
    assert_eq!(status().as_deref(), Some("deinstall ok config-files"));
    assert_eq!(std::fs::read_to_string(CONFFILE).ok(), Some(edited));
    assert!(
        !Path::new("/usr/bin/exfil-sensor").exists(),
        "binary removed"
    );
    for file in evidence {
        assert!(Path::new(file).exists(), "remove keeps the evidence {file}");
    }
    for (installed, _) in SHIPPED_AS_IS.iter().filter(|(path, _)| *path != CONFFILE) {
        assert!(!Path::new(installed).exists(), "{installed} removed");
    }

    ok("dpkg", &["--purge", PACKAGE]);
    // Nothing of the package remains: dpkg has no record of it, and none of its paths exist.
    let (listed, text, _) = run("dpkg", &["-L", PACKAGE]);
    assert!(!listed, "dpkg -L after purge: {text}");
    assert_eq!(status(), None, "dpkg-query after purge");
    for path in [
        "/etc/exfil-sensor",
        "/usr/bin/exfil-sensor",
        "/usr/share/exfil-sensor",
        "/usr/share/doc/exfil-sensor",
        "/usr/lib/systemd/system/exfil-sensor.service",
        EVIDENCE_DIRS[0],
        EVIDENCE_DIRS[1],
        ENABLED_LINK,
        // deb-systemd-helper's mask on remove, undone by purge.
        "/etc/systemd/system/exfil-sensor.service",
    ] {
        assert!(
            !Path::new(path).exists() && !Path::new(path).is_symlink(),
            "{path} is left after purge"
        );
    }
    // What stays: the user and group (their ids must not be reused while files may still be
    // theirs), and the kernel pins of an agent this package did not start.
    assert!(passwd_entry().is_some() && group_exists(), "user kept");
    assert_eq!(
        Path::new(PIN_DIR).exists(),
        pins_before,
        "{PIN_DIR} untouched"
    );
    drop(guard);
}

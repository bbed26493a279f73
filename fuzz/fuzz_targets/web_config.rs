//! The web config parser (exporter-toolkit's web-config.yml) on any text: it must never
//! panic, and what it accepts must be whole: its own file first among the watched files, and
//! a TLS setup only with a certificate and a key.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor::http::WebConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("/etc/exfil-sensor/web.yml");
    let Ok(config) = WebConfig::parse(text, path) else {
        return;
    };
    assert_eq!(config.watched_files().first().map(|p| p.as_path()), Some(path));
    if let Some(tls) = &config.tls {
        assert!(tls.min_version <= tls.max_version);
    }
});

//! The config parser and its validation on any text: `Config::parse` must never panic, and
//! what it accepts must not depend on how the TOML was written: the same table written out
//! again by `toml` (other quoting, order and layout) parses to the same config.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text, "fuzz.toml") else {
        return;
    };
    let table: toml::Table = toml::from_str(text).expect("accepted text is a TOML table");
    let again = toml::to_string(&table).expect("a parsed table writes out");
    let reparsed = Config::parse(&again, "again.toml")
        .unwrap_or_else(|e| panic!("accepted config refused once rewritten: {e}\n{again}"));
    assert_eq!(reparsed, config, "{again}");
});

//! The configuration parser and its validation, on arbitrary text (seeded with real configs):
//! an error names what is wrong, nothing panics.
#![no_main]

use gateway::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(config) = Config::from_toml(text) else {
        return;
    };
    if let Err(err) = config.validate(None, None) {
        assert!(!err.to_string().is_empty());
    }
});

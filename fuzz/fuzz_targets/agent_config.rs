//! `AgentConfig::parse` on arbitrary text: never a panic; every error is one line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = weft_config::AgentConfig::parse("agent.toml", text) {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
});

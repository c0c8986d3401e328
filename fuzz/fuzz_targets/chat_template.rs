//! Chat-template rendering with hostile templates and messages:
//! `template \0 role \0 content \0 role \0 content …`. Properties: no
//! panic, no hang, no unbounded memory.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern_fuzz::chat_template(data));

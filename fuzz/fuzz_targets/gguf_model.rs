//! The GGUF reader and the model loader on arbitrary bytes, then a short
//! forward pass and the tokenizer on whatever loads. Properties: no panic,
//! no abort, no allocation past the input's size (libFuzzer's -rss_limit_mb
//! and -malloc_limit_mb), no hang; a model that loads must run.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern_fuzz::gguf_model(data));

//! The converter's inputs: config.json, tokenizer.json,
//! tokenizer_config.json and a safetensors file, in one buffer:
//! `[type byte] config \0 tokenizer.json \0 tokenizer_config \0 safetensors`
//! (outtype = byte % 5 of i2_s, tq2_0, tq1_0, f16, f32; embedding type =
//! byte / 5 % 4 of f16, f32, q8_0, q6_k). Properties: no panic or abort,
//! and what the converter writes, the runtime loads (a file the runtime
//! refuses must be refused by the converter instead).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern_fuzz::hf_convert(data));

//! Reading a Hugging Face checkpoint folder: config, safetensors (single or
//! sharded, memory-mapped), tokenizer files.

pub mod checkpoint;
pub mod config;
pub mod sentencepiece;
pub mod vocab;

pub use checkpoint::Checkpoint;
pub use config::HfConfig;
pub use vocab::HfVocab;

/// At most 64 characters of `s` (text from a file, for a message; print it
/// with `{:?}` so that control characters come out escaped).
pub fn short(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A JSON value from a file, serialized (escaped) and cut to 64 characters.
pub fn short_json(v: &serde_json::Value) -> String {
    short(&v.to_string())
}

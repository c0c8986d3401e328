//! Reading a Hugging Face checkpoint folder: config, safetensors (single or
//! sharded, memory-mapped), tokenizer files.

pub mod checkpoint;
pub mod config;
pub mod sentencepiece;
pub mod vocab;

pub use checkpoint::Checkpoint;
pub use config::{HfConfig, Variant};
pub use vocab::HfVocab;

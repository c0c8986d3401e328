//! tern: convert and run ternary (BitNet b1.58) language models.

pub mod arch;
#[cfg(feature = "bitnet-cpp")]
pub mod bitnet_cpp;
pub mod chat;
pub mod check;
pub mod cli;
pub mod convert;
pub mod gguf;
pub mod hf;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod perplexity;
pub mod quant;
pub mod rope;
pub mod server;
pub mod signals;
pub mod synth;
pub mod tokenizer;
pub mod untrusted;

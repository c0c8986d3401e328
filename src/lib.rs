//! tern: convert and run ternary (BitNet b1.58) language models.

pub mod cli;
pub mod convert;
pub mod gguf;
pub mod hf;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod quant;
pub mod tokenizer;

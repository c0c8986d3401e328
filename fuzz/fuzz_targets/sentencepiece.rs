//! The SentencePiece `tokenizer.model` reader (a protobuf wire parser), and
//! the runtime's SentencePiece tokenizer built from what it reads.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern_fuzz::sentencepiece(data));

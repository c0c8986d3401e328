//! Bounds-checked parser for SentencePiece `tokenizer.model` files.
//!
//! A `tokenizer.model` is a serialized protobuf `sentencepiece.ModelProto`
//! (see `src/sentencepiece_model.proto` in google/sentencepiece):
//!
//! ```text
//! message ModelProto {
//!   message SentencePiece {
//!     enum Type { NORMAL = 1; UNKNOWN = 2; CONTROL = 3;
//!                 USER_DEFINED = 4; UNUSED = 5; BYTE = 6; }
//!     optional string piece = 1;
//!     optional float  score = 2;
//!     optional Type   type  = 3 [default = NORMAL];
//!   }
//!   repeated SentencePiece pieces = 1;
//!   optional TrainerSpec trainer_spec = 2;       // model_type = 3, unk_id = 40,
//!                                                // bos_id = 41, eos_id = 42, pad_id = 43
//!   optional NormalizerSpec normalizer_spec = 3; // add_dummy_prefix = 3
//!   optional SelfTestData self_test_data = 4;
//!   optional NormalizerSpec denormalizer_spec = 5;
//! }
//! ```
//!
//! Only the fields above are decoded; everything else is skipped. The wire
//! reader is self-contained: every length is checked against the remaining
//! input, groups and unknown wire types are rejected, and no input can make
//! it panic. Errors are single-line messages that name the byte offset.

use anyhow::{bail, Result};

/// Prefix for every error message.
const CTX: &str = "tokenizer.model";

/// Kind of a vocabulary entry (`ModelProto.SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    /// llama.cpp GGUF token_type value: Normal 1, Unknown 2, Control 3, UserDefined 4, Unused 5, Byte 6
    pub fn gguf_token_type(self) -> i32 {
        match self {
            PieceType::Normal => 1,
            PieceType::Unknown => 2,
            PieceType::Control => 3,
            PieceType::UserDefined => 4,
            PieceType::Unused => 5,
            PieceType::Byte => 6,
        }
    }

    /// Map a SentencePiece `Type` enum value (1..=6) to a [`PieceType`].
    pub fn from_proto(value: i32) -> Option<PieceType> {
        Some(match value {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return None,
        })
    }
}

/// One vocabulary entry; its id is its index in [`SpModel::pieces`].
#[derive(Debug, Clone)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// The parts of a `ModelProto` a converter/runtime needs.
///
/// The `Option` fields are `None` when the field is not serialized in the
/// file; the proto2 defaults then apply (model_type UNIGRAM=1, unk_id 0,
/// bos_id 1, eos_id 2, pad_id -1, add_dummy_prefix true).
#[derive(Debug, Clone, Default)]
pub struct SpModel {
    pub pieces: Vec<Piece>,
    /// `TrainerSpec.model_type`: UNIGRAM=1 BPE=2 WORD=3 CHAR=4.
    pub model_type: Option<i32>,
    pub unk_id: Option<i32>,
    pub bos_id: Option<i32>,
    pub eos_id: Option<i32>,
    pub pad_id: Option<i32>,
    /// `NormalizerSpec.add_dummy_prefix`.
    pub add_dummy_prefix: Option<bool>,
}

/// Parse a serialized SentencePiece `ModelProto`.
///
/// Besides wire-level validation, the model must contain at least one piece,
/// a `trainer_spec` and a `normalizer_spec` (the SentencePiece trainer always
/// writes both). Since protobuf messages are prefix-parseable, these
/// requirements are what turns a file cut at a field boundary into an error
/// instead of a silently shortened vocabulary.
pub fn parse_model(bytes: &[u8]) -> Result<SpModel> {
    let mut model = SpModel::default();
    let mut have_trainer = false;
    let mut have_normalizer = false;
    let mut r = Reader::new(bytes, 0);
    while let Some(f) = r.next_field()? {
        match f.number {
            1 => {
                let (buf, base) = f.expect_bytes("ModelProto.pieces")?;
                let idx = model.pieces.len();
                model.pieces.push(parse_piece(buf, base, idx)?);
            }
            2 => {
                let (buf, base) = f.expect_bytes("ModelProto.trainer_spec")?;
                parse_trainer_spec(buf, base, &mut model)?;
                have_trainer = true;
            }
            3 => {
                let (buf, base) = f.expect_bytes("ModelProto.normalizer_spec")?;
                parse_normalizer_spec(buf, base, &mut model)?;
                have_normalizer = true;
            }
            _ => {}
        }
    }
    if model.pieces.is_empty() {
        bail!("{CTX}: no pieces (field 1); file is truncated or not a SentencePiece model");
    }
    if !have_trainer {
        bail!(
            "{CTX}: no trainer_spec (field 2) after {} pieces; file is truncated or not a SentencePiece model",
            model.pieces.len()
        );
    }
    if !have_normalizer {
        bail!(
            "{CTX}: no normalizer_spec (field 3); file is truncated or not a SentencePiece model"
        );
    }
    Ok(model)
}

fn parse_piece(buf: &[u8], base: usize, idx: usize) -> Result<Piece> {
    let mut piece = String::new();
    let mut score = 0.0f32;
    let mut kind = PieceType::Normal;
    let mut r = Reader::new(buf, base);
    while let Some(f) = r.next_field()? {
        match f.number {
            1 => {
                let (s, at) = f.expect_bytes("SentencePiece.piece")?;
                piece = match std::str::from_utf8(s) {
                    Ok(s) => s.to_owned(),
                    Err(_) => bail!("{CTX}: piece {idx} is not valid UTF-8 at byte {at}"),
                };
            }
            2 => score = f.expect_f32("SentencePiece.score")?,
            3 => {
                let v = f.expect_i32("SentencePiece.type")?;
                kind = match PieceType::from_proto(v) {
                    Some(k) => k,
                    None => bail!(
                        "{CTX}: piece {idx} has unknown type {v} at byte {}",
                        f.offset
                    ),
                };
            }
            _ => {}
        }
    }
    Ok(Piece { piece, score, kind })
}

fn parse_trainer_spec(buf: &[u8], base: usize, model: &mut SpModel) -> Result<()> {
    let mut r = Reader::new(buf, base);
    while let Some(f) = r.next_field()? {
        // int32 / enum fields (negative values are 64-bit sign-extended).
        let slot = match f.number {
            3 => &mut model.model_type,
            40 => &mut model.unk_id,
            41 => &mut model.bos_id,
            42 => &mut model.eos_id,
            43 => &mut model.pad_id,
            _ => continue,
        };
        *slot = Some(f.expect_i32("TrainerSpec int32 field")?);
    }
    Ok(())
}

fn parse_normalizer_spec(buf: &[u8], base: usize, model: &mut SpModel) -> Result<()> {
    let mut r = Reader::new(buf, base);
    while let Some(f) = r.next_field()? {
        if f.number == 3 {
            model.add_dummy_prefix = Some(f.expect_varint("NormalizerSpec.add_dummy_prefix")? != 0);
        }
    }
    Ok(())
}

/// A decoded field value.
enum Value<'a> {
    Varint(u64),
    /// Skipped (no field we decode is a 64-bit fixed type).
    Fixed64,
    /// Payload and the absolute file offset where it starts.
    Bytes(&'a [u8], usize),
    Fixed32(u32),
}

struct Field<'a> {
    number: u32,
    /// Absolute file offset of the field's tag.
    offset: usize,
    value: Value<'a>,
}

impl<'a> Field<'a> {
    fn wire_type(&self) -> u8 {
        match self.value {
            Value::Varint(_) => 0,
            Value::Fixed64 => 1,
            Value::Bytes(..) => 2,
            Value::Fixed32(_) => 5,
        }
    }

    fn mismatch(&self, name: &str, expected: u8) -> anyhow::Error {
        anyhow::anyhow!(
            "{CTX}: {name} (field {}) has wire type {}, expected {expected} at byte {}",
            self.number,
            self.wire_type(),
            self.offset
        )
    }

    fn expect_bytes(&self, name: &str) -> Result<(&'a [u8], usize)> {
        match self.value {
            Value::Bytes(b, at) => Ok((b, at)),
            _ => Err(self.mismatch(name, 2)),
        }
    }

    fn expect_varint(&self, name: &str) -> Result<u64> {
        match self.value {
            Value::Varint(v) => Ok(v),
            _ => Err(self.mismatch(name, 0)),
        }
    }

    /// An `int32` / enum field: protobuf writes negative values as the
    /// 64-bit sign extension, so the varint read as an i64 must lie in i32's
    /// range (anything else is not a value an encoder writes; it is refused
    /// rather than cut to its low 32 bits).
    fn expect_i32(&self, name: &str) -> Result<i32> {
        let v = self.expect_varint(name)?;
        // Reinterpreting the 64 bits is the wire format's definition.
        i32::try_from(v as i64).map_err(|_| {
            anyhow::anyhow!(
                "{CTX}: {name} (field {}) holds {v}, not an int32, at byte {}",
                self.number,
                self.offset
            )
        })
    }

    fn expect_f32(&self, name: &str) -> Result<f32> {
        match self.value {
            Value::Fixed32(v) => Ok(f32::from_bits(v)),
            _ => Err(self.mismatch(name, 5)),
        }
    }
}

/// Minimal protobuf wire-format reader over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Absolute file offset of `buf[0]`, for error messages.
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    fn at(&self) -> usize {
        self.base.saturating_add(self.pos)
    }

    fn varint(&mut self) -> Result<u64> {
        let start = self.at();
        let mut value = 0u64;
        for i in 0..10u32 {
            let Some(&b) = self.buf.get(self.pos) else {
                bail!("{CTX}: truncated varint at byte {start}");
            };
            self.pos += 1;
            // The 10th byte may only carry the top bit of a u64.
            if i == 9 && b > 1 {
                bail!("{CTX}: varint overflows 64 bits at byte {start}");
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("{CTX}: varint longer than 10 bytes at byte {start}")
    }

    fn take(&mut self, n: usize, what: &str, start: usize) -> Result<&'a [u8]> {
        let remaining = self.buf.len() - self.pos;
        if n > remaining {
            bail!("{CTX}: truncated {what} at byte {start}: need {n} bytes, {remaining} left");
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Next field, or `None` at the end of the message.
    fn next_field(&mut self) -> Result<Option<Field<'a>>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let offset = self.at();
        let tag = self.varint()?;
        let number = tag >> 3;
        if number == 0 || number > (1 << 29) - 1 {
            bail!("{CTX}: invalid field number {number} at byte {offset}");
        }
        let number = u32::try_from(number).expect("checked < 2^29 above");
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8, "64-bit field", offset)?;
                Value::Fixed64
            }
            2 => {
                let len_at = self.at();
                let len = self.varint()?;
                let len = match usize::try_from(len) {
                    Ok(l) => l,
                    Err(_) => bail!("{CTX}: length {len} too large at byte {len_at}"),
                };
                let data_at = self.at();
                let b = self.take(len, "length-delimited field", offset)?;
                Value::Bytes(b, data_at)
            }
            5 => {
                let b = self.take(4, "32-bit field", offset)?;
                let mut a = [0u8; 4];
                a.copy_from_slice(b);
                Value::Fixed32(u32::from_le_bytes(a))
            }
            3 | 4 => bail!(
                "{CTX}: unsupported group (wire type {}) in field {number} at byte {offset}",
                tag & 7
            ),
            w => bail!("{CTX}: invalid wire type {w} in field {number} at byte {offset}"),
        };
        Ok(Some(Field {
            number,
            offset,
            value,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/spm-tiny")
    }

    fn fixture_bytes() -> Vec<u8> {
        std::fs::read(fixture_dir().join("tokenizer.model")).expect("read spm-tiny fixture")
    }

    fn opt_i32(v: &serde_json::Value) -> Option<i32> {
        v.as_i64().map(|x| x as i32)
    }

    // --- tiny protobuf writer for hand-built inputs ---
    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn put_tag(out: &mut Vec<u8>, field: u64, wire: u64) {
        put_varint(out, (field << 3) | wire);
    }
    fn put_bytes(out: &mut Vec<u8>, field: u64, data: &[u8]) {
        put_tag(out, field, 2);
        put_varint(out, data.len() as u64);
        out.extend_from_slice(data);
    }
    fn put_int(out: &mut Vec<u8>, field: u64, v: i64) {
        put_tag(out, field, 0);
        put_varint(out, v as u64);
    }
    fn piece_msg(p: &str, score: f32, ty: Option<i64>) -> Vec<u8> {
        let mut m = Vec::new();
        put_bytes(&mut m, 1, p.as_bytes());
        put_tag(&mut m, 2, 5);
        m.extend_from_slice(&score.to_le_bytes());
        if let Some(t) = ty {
            put_int(&mut m, 3, t);
        }
        m
    }
    /// Minimal valid model: the given pieces + given trainer/normalizer specs.
    fn model_bytes(pieces: &[Vec<u8>], trainer: &[u8], normalizer: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            put_bytes(&mut out, 1, p);
        }
        put_bytes(&mut out, 2, trainer);
        put_bytes(&mut out, 3, normalizer);
        out
    }

    #[test]
    fn fixture_matches_python_sentencepiece() {
        let bytes = fixture_bytes();
        let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
        let exp: serde_json::Value = serde_json::from_str(&text).unwrap();
        let m = parse_model(&bytes).unwrap();

        let pieces = exp["pieces"].as_array().unwrap();
        let scores = exp["scores"].as_array().unwrap();
        let types = exp["types"].as_array().unwrap();
        assert_eq!(m.pieces.len(), pieces.len());
        assert_eq!(m.pieces.len() as u64, exp["vocab_size"].as_u64().unwrap());
        for (i, p) in m.pieces.iter().enumerate() {
            assert_eq!(p.piece, pieces[i].as_str().unwrap(), "piece {i}");
            let s = scores[i].as_f64().unwrap() as f32;
            assert_eq!(p.score.to_bits(), s.to_bits(), "score of piece {i}");
            let t = types[i].as_i64().unwrap() as i32;
            assert_eq!(PieceType::from_proto(t), Some(p.kind), "type of piece {i}");
            assert_eq!(p.kind.gguf_token_type(), t, "gguf type of piece {i}");
        }

        // Raw (serialized) optional fields.
        let proto = &exp["proto"];
        assert_eq!(m.model_type, opt_i32(&proto["model_type"]));
        assert_eq!(m.unk_id, opt_i32(&proto["unk_id"]));
        assert_eq!(m.bos_id, opt_i32(&proto["bos_id"]));
        assert_eq!(m.eos_id, opt_i32(&proto["eos_id"]));
        assert_eq!(m.pad_id, opt_i32(&proto["pad_id"]));
        assert_eq!(m.add_dummy_prefix, proto["add_dummy_prefix"].as_bool());

        // Effective values reported by the Python processor.
        assert_eq!(m.model_type, Some(2), "fixture is BPE");
        assert_eq!(m.unk_id.unwrap_or(0), opt_i32(&exp["unk_id"]).unwrap());
        assert_eq!(m.bos_id.unwrap_or(1), opt_i32(&exp["bos_id"]).unwrap());
        assert_eq!(m.eos_id.unwrap_or(2), opt_i32(&exp["eos_id"]).unwrap());
        assert_eq!(m.pad_id.unwrap_or(-1), opt_i32(&exp["pad_id"]).unwrap());
        assert_eq!(
            m.add_dummy_prefix.unwrap_or(true),
            exp["add_dummy_prefix"].as_bool().unwrap()
        );

        // Sanity on the special pieces.
        assert_eq!(m.pieces[0].kind, PieceType::Unknown);
        assert_eq!(m.pieces[1].kind, PieceType::Control);
        assert_eq!(m.pieces[2].kind, PieceType::Control);
        assert_eq!(m.pieces[3].piece, "<0x00>");
        assert_eq!(m.pieces[3].kind, PieceType::Byte);
        assert_eq!(
            m.pieces
                .iter()
                .filter(|p| p.kind == PieceType::Byte)
                .count(),
            256
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = fixture_bytes();
        for cut in 0..bytes.len() {
            match parse_model(&bytes[..cut]) {
                Ok(m) => panic!("cut at {cut} parsed with {} pieces", m.pieces.len()),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.starts_with("tokenizer.model: "), "{msg}");
                    assert!(!msg.contains('\n'), "{msg}");
                }
            }
        }
        assert!(parse_model(&bytes).is_ok());
    }

    #[test]
    fn random_garbage_never_panics() {
        // xorshift64*: deterministic, no dependencies.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        // Pure garbage of assorted lengths.
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = parse_model(&buf);
        }
        // Valid file with random byte flips, insertions and splices.
        let base = fixture_bytes();
        for _ in 0..3_000 {
            let mut buf = base.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % buf.len();
                match next() % 3 {
                    0 => buf[i] = next() as u8,
                    1 => buf.insert(i, next() as u8),
                    _ => {
                        buf.remove(i);
                    }
                }
            }
            let _ = parse_model(&buf);
        }
    }

    #[test]
    fn hand_built_model_and_defaults() {
        let pieces = [
            piece_msg("<unk>", 0.0, Some(2)),
            piece_msg("<s>", 0.0, Some(3)),
            piece_msg("▁hi", -1.5, None),
            piece_msg("<0x41>", 0.0, Some(6)),
            piece_msg("<mask>", 0.0, Some(4)),
            piece_msg("zz", -9.0, Some(5)),
        ];
        // Trainer spec with an unrelated string field, a negative pad_id
        // (10-byte varint) and an unknown fixed64 field to skip.
        let mut trainer = Vec::new();
        put_bytes(&mut trainer, 1, b"corpus.txt");
        put_int(&mut trainer, 3, 1);
        put_int(&mut trainer, 43, -1);
        put_int(&mut trainer, 41, 7);
        put_tag(&mut trainer, 250, 1);
        trainer.extend_from_slice(&[0; 8]);
        let mut normalizer = Vec::new();
        put_bytes(&mut normalizer, 1, b"nmt_nfkc");
        put_int(&mut normalizer, 3, 0);
        let mut bytes = model_bytes(&pieces, &trainer, &normalizer);
        // Unknown top-level field (self_test_data) is skipped.
        put_bytes(&mut bytes, 4, b"\x0a\x00");

        let m = parse_model(&bytes).unwrap();
        let kinds: Vec<_> = m.pieces.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [
                PieceType::Unknown,
                PieceType::Control,
                PieceType::Normal,
                PieceType::Byte,
                PieceType::UserDefined,
                PieceType::Unused
            ]
        );
        assert_eq!(m.pieces[2].piece, "▁hi");
        assert_eq!(m.pieces[2].score, -1.5);
        assert_eq!(m.model_type, Some(1));
        assert_eq!(m.pad_id, Some(-1));
        assert_eq!(m.bos_id, Some(7));
        assert_eq!(m.unk_id, None);
        assert_eq!(m.eos_id, None);
        assert_eq!(m.add_dummy_prefix, Some(false));

        // Empty specs: everything optional is None.
        let m = parse_model(&model_bytes(&pieces[..1], &[], &[])).unwrap();
        assert_eq!(m.pieces.len(), 1);
        assert_eq!(m.model_type, None);
        assert_eq!(m.add_dummy_prefix, None);
    }

    #[test]
    fn gguf_token_types() {
        for v in 1..=6 {
            assert_eq!(PieceType::from_proto(v).unwrap().gguf_token_type(), v);
        }
        assert_eq!(PieceType::from_proto(0), None);
        assert_eq!(PieceType::from_proto(7), None);
    }

    #[test]
    fn malformed_inputs_give_one_line_errors() {
        let ok_piece = piece_msg("a", 0.0, None);
        let err = |bytes: &[u8]| parse_model(bytes).unwrap_err().to_string();

        assert!(err(&[]).contains("no pieces"));
        // Group wire types are rejected.
        assert!(err(&[0x0b]).contains("group"));
        assert!(err(&[0x0c]).contains("group"));
        // Invalid wire types 6 and 7.
        assert!(err(&[0x0e]).contains("invalid wire type 6"));
        assert!(err(&[0x0f]).contains("invalid wire type 7"));
        // Field number 0.
        assert!(err(&[0x02, 0x00]).contains("invalid field number 0"));
        // Truncated varint.
        assert_eq!(
            err(&[0x08, 0x80]),
            "tokenizer.model: truncated varint at byte 1"
        );
        // Over-long varint.
        let mut long = vec![0x08];
        long.extend_from_slice(&[0xff; 11]);
        assert!(err(&long).contains("varint"));
        // Huge length.
        let mut huge = vec![0x0a];
        put_varint(&mut huge, u64::MAX);
        assert!(err(&huge).contains("length"));
        // Wrong wire type for a known field.
        assert!(err(&[0x08, 0x01]).contains("wire type 0, expected 2"));
        // Bad piece type / bad UTF-8 / piece field with wrong wire type.
        let mut bad_type = Vec::new();
        put_bytes(&mut bad_type, 1, &piece_msg("a", 0.0, Some(9)));
        assert!(err(&bad_type).contains("piece 0 has unknown type 9"));
        let mut bad_utf8 = Vec::new();
        put_bytes(&mut bad_utf8, 1, &[0x0a, 0x01, 0xff]);
        assert!(err(&bad_utf8).contains("piece 0 is not valid UTF-8 at byte 4"));
        let mut bad_score = Vec::new();
        put_bytes(&mut bad_score, 1, &[0x10, 0x01]);
        assert!(err(&bad_score).contains("SentencePiece.score"));
        // Missing specs.
        let mut only_pieces = Vec::new();
        put_bytes(&mut only_pieces, 1, &ok_piece);
        assert!(err(&only_pieces).contains("no trainer_spec"));
        put_bytes(&mut only_pieces, 2, &[]);
        assert!(err(&only_pieces).contains("no normalizer_spec"));
        put_bytes(&mut only_pieces, 3, &[]);
        assert!(parse_model(&only_pieces).is_ok());
        // Error inside a nested message reports the absolute offset.
        let mut nested = Vec::new();
        put_bytes(&mut nested, 1, &ok_piece);
        put_bytes(&mut nested, 2, &[0x08, 0x80]); // truncated varint inside
        let at = nested.len() - 1;
        assert_eq!(
            err(&nested),
            format!("tokenizer.model: truncated varint at byte {at}")
        );
    }
}

//! ggml's ternary block types TQ1_0 (type 34) and TQ2_0 (type 35).
//!
//! Byte layout, as defined by upstream ggml (`ggml/src/ggml-common.h`:
//! `block_tq1_0`, `block_tq2_0`; `ggml/src/ggml-quants.c`:
//! `quantize_row_tq*_0_ref`, `dequantize_row_tq*_0`). Both types cut a row
//! into blocks of [`QK_K`] = 256 values and end each block with the block
//! scale `d` as a little-endian f16. A value `x` is stored as the digit
//! `round(x / d) + 1`, so `-1 → 0`, `0 → 1`, `+1 → 2`.
//!
//! **TQ2_0** (66 bytes): `qs[64]`, then `d`. The block is two chunks of 128
//! values; value `128 * c + 32 * n + m` (`n < 4`, `m < 32`) sits in byte
//! `qs[32 * c + m]` at bits `2n..2n+2`. The digit value 3 never occurs.
//!
//! **TQ1_0** (54 bytes): `qs[48]`, `qh[4]`, then `d`. Bytes hold base-3
//! numbers, first value in the most significant trit, stored scaled to the
//! byte range as `ceil(v * 256 / 243)` so that the leading trit can be read
//! back as `(byte * 3) >> 8` and the next one by first multiplying the byte
//! by 3 (mod 256), and so on. Three groups, in byte order:
//!
//! * `qs[0..32]`: values `0..160`; byte `m` holds values `m + 32 * n`, `n < 5`;
//! * `qs[32..48]`: values `160..240`; byte `32 + m` holds `160 + m + 16 * n`;
//! * `qh[0..4]`: values `240..256`; byte `m` holds `240 + m + 4 * n`, `n < 4`,
//!   with a fifth, least significant trit that is always 0.
//!
//! An all-zero block is stored by ggml with `d = 0` (the scale is the block's
//! max |x|) and every digit 1.

use anyhow::{bail, Result};
use half::f16;

/// Values per block.
pub const QK_K: usize = 256;
/// Bytes per TQ2_0 block: `qs[QK_K / 4]` plus the f16 scale.
pub const TQ2_0_BLOCK_BYTES: usize = 66;
/// Bytes per TQ1_0 block: `qs[48]`, `qh[4]` plus the f16 scale.
pub const TQ1_0_BLOCK_BYTES: usize = 54;

/// `sizeof(block_tq2_0::qs)`.
const TQ2_QS: usize = QK_K / 4;
/// `sizeof(block_tq1_0::qs)`: five values per byte.
const TQ1_QS: usize = (QK_K - 4 * QK_K / 64) / 5;
/// `sizeof(block_tq1_0::qh)`: four values per byte.
const TQ1_QH: usize = QK_K / 64;

const _: () = assert!(TQ2_QS + 2 == TQ2_0_BLOCK_BYTES);
const _: () = assert!(TQ1_QS + TQ1_QH + 2 == TQ1_0_BLOCK_BYTES);

/// One run of TQ1_0 bytes: `width` consecutive bytes starting at `byte`,
/// each holding `trits` values; byte `byte + m`, trit `n` (most significant
/// first) holds value `value + m + n * width`.
struct Tq1Group {
    byte: usize,
    width: usize,
    trits: usize,
    value: usize,
}

/// ggml fills `qs` in chunks of 32 bytes while a whole chunk fits, then in
/// chunks of 16, then `qh`.
#[rustfmt::skip]
const TQ1_GROUPS: [Tq1Group; 3] = [
    Tq1Group { byte: 0, width: 32, trits: 5, value: 0 },
    Tq1Group { byte: 32, width: 16, trits: 5, value: 160 },
    Tq1Group { byte: TQ1_QS, width: TQ1_QH, trits: 4, value: 240 },
];

const _: () = assert!(TQ1_QS - TQ1_QS % 32 == 32 && TQ1_QS == 48 && TQ1_QH == 4);

const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// Scale a base-3 number `v < 243` (as C `uint8_t` arithmetic left it) to a
/// byte the way ggml does: `(v * 256 + 242) / 243`, i.e. a ceiling division.
const fn tq1_scale(v: u8) -> u8 {
    (v as u32 * 256).div_ceil(243) as u8
}

/// Trit `n` (0 = most significant) of a TQ1_0 byte, by ggml's multiply trick.
fn tq1_trit(byte: u8, n: usize) -> u8 {
    let q = byte.wrapping_mul(POW3[n]);
    ((u16::from(q) * 3) >> 8) as u8
}

/// Which bytes the encoder can produce for a group of `trits` values.
const fn tq1_canonical(trits: usize) -> [bool; 256] {
    let mut table = [false; 256];
    let count = if trits == 5 { 243 } else { 81 };
    let mut v = 0;
    while v < count {
        let shifted = if trits == 5 { v } else { v * 3 };
        table[tq1_scale(shifted as u8) as usize] = true;
        v += 1;
    }
    table
}

const TQ1_CANONICAL_5: [bool; 256] = tq1_canonical(5);
const TQ1_CANONICAL_4: [bool; 256] = tq1_canonical(4);

/// ggml's `GGML_FP32_TO_FP16`: round to nearest even; NaN becomes the
/// canonical quiet NaN with the input's sign.
fn f32_to_f16_bits(v: f32) -> u16 {
    if v.is_nan() {
        ((v.to_bits() >> 16) as u16 & 0x8000) | 0x7E00
    } else {
        f16::from_f32(v).to_bits()
    }
}

fn f16_bits_to_f32(lo: u8, hi: u8) -> f32 {
    f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

/// `lroundf(v) + 1` as ggml stores it in an `int` (then adds it into a
/// `uint8_t`, so only the value mod 256 matters). For finite input whose
/// block max |x| is at least 2^-128, `v` lies in `[-1, 1]` and this is 0, 1
/// or 2. Where `lroundf` has no result (`v` non-finite, e.g. when `1 / amax`
/// overflows, or beyond `long`), this follows x86-64 glibc, which returns
/// `LONG_MIN`: the `int` is then 1 (checked against the C code).
fn ggml_digit(v: f32) -> u8 {
    const TWO_POW_63: f32 = 9_223_372_036_854_775_808.0;
    let l = if v.is_finite() && v.abs() < TWO_POW_63 {
        v.round() as i64 // half away from zero, like lroundf
    } else {
        i64::MIN
    };
    (l.wrapping_add(1) as i32) as u8
}

/// ggml's `MAX(amax, fabsf(v))` over a block (`a > b ? a : b`, which keeps
/// a NaN only when it comes last).
fn ggml_amax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |amax, &v| {
        let a = v.abs();
        if amax > a {
            amax
        } else {
            a
        }
    })
}

/// Digits (`round(x / amax) + 1`) and f16 scale bits of one block, exactly as
/// the reference quantizers compute them.
fn ref_block_digits(x: &[f32]) -> ([u8; QK_K], u16) {
    debug_assert_eq!(x.len(), QK_K);
    let d = ggml_amax(x);
    // `d ? 1.0f/d : 0.0f`: NaN counts as true.
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut digits = [0u8; QK_K];
    for (dst, &v) in digits.iter_mut().zip(x) {
        *dst = ggml_digit(v * id);
    }
    (digits, f32_to_f16_bits(d))
}

fn pack_tq2_0(digits: &[u8; QK_K], d_bits: u16, out: &mut Vec<u8>) {
    for chunk in digits.chunks_exact(128) {
        for m in 0..32 {
            let mut q = 0u8;
            for n in 0..4 {
                q |= (chunk[m + 32 * n] & 3) << (2 * n);
            }
            out.push(q);
        }
    }
    out.extend_from_slice(&d_bits.to_le_bytes());
}

fn pack_tq1_0(digits: &[u8; QK_K], d_bits: u16, out: &mut Vec<u8>) {
    for g in &TQ1_GROUPS {
        for m in 0..g.width {
            // C `uint8_t` arithmetic: wraps mod 256 (only for digits > 2).
            let mut q = 0u8;
            for n in 0..g.trits {
                q = q
                    .wrapping_mul(3)
                    .wrapping_add(digits[g.value + m + n * g.width]);
            }
            if g.trits == 4 {
                // The first value goes to the most significant of five trits.
                q = q.wrapping_mul(3);
            }
            out.push(tq1_scale(q));
        }
    }
    out.extend_from_slice(&d_bits.to_le_bytes());
}

/// Digits of one block of ternary codes (the codes negated when `flip`).
///
/// # Panics
/// If a code is not -1, 0 or +1.
fn code_digits(block: &[i8], flip: bool) -> [u8; QK_K] {
    let mut digits = [0u8; QK_K];
    for (i, (dst, &c)) in digits.iter_mut().zip(block).enumerate() {
        assert!(
            (-1..=1).contains(&c),
            "ternary code {c} at index {i} is not -1, 0 or +1"
        );
        let c = if flip { -c } else { c };
        *dst = (c + 1) as u8;
    }
    digits
}

/// Encode ternary codes with a common scale `d`, producing exactly the bytes
/// of `quantize(codes[i] * d)` with the given reference quantizer.
fn encode_with(
    codes: &[i8],
    d: f32,
    name: &str,
    block_bytes: usize,
    pack: fn(&[u8; QK_K], u16, &mut Vec<u8>),
    out: &mut Vec<u8>,
) {
    assert!(
        codes.len().is_multiple_of(QK_K),
        "{name} needs a multiple of {QK_K} values, got {}",
        codes.len()
    );
    out.reserve(codes.len() / QK_K * block_bytes);
    // For a finite non-zero d, the quantizer sees amax = |d| and computes
    // x * (1 / |d|) = ±(|d| * (1 / |d|)) for codes ±1; when that rounds to 1
    // the digits are the codes themselves (negated for negative d), and we
    // can pack them directly. Anything else (d = 0, non-finite, or so tiny
    // that 1/|d| overflows) goes through the reference path on c * d.
    let ad = d.abs();
    let direct = d.is_finite() && ad != 0.0 && (ad * (1.0 / ad)).round() == 1.0;
    let d_bits = f32_to_f16_bits(ad);
    for block in codes.chunks_exact(QK_K) {
        if direct {
            let digits = code_digits(block, d < 0.0);
            if digits.iter().all(|&v| v == 1) {
                // amax = 0: ggml stores d = 0.
                pack(&digits, 0, out);
            } else {
                pack(&digits, d_bits, out);
            }
        } else {
            code_digits(block, false); // validate
            let x: Vec<f32> = block.iter().map(|&c| f32::from(c) * d).collect();
            let (digits, bits) = ref_block_digits(&x);
            pack(&digits, bits, out);
        }
    }
}

/// Encode ternary codes (each -1, 0 or +1; `codes.len()` a multiple of 256)
/// with scale `d` for every block, appending TQ2_0 blocks to `out`.
///
/// The bytes are those ggml's `quantize_row_tq2_0_ref` produces for
/// `x[i] = codes[i] * d`: each block stores `f16(|d|)` (a negative `d` flips
/// the codes), except that an all-zero block stores `d = 0`.
///
/// # Panics
/// If `codes.len()` is not a multiple of 256 or a code is not -1, 0 or +1.
pub fn encode_tq2_0(codes: &[i8], d: f32, out: &mut Vec<u8>) {
    encode_with(codes, d, "TQ2_0", TQ2_0_BLOCK_BYTES, pack_tq2_0, out);
}

/// Encode ternary codes (each -1, 0 or +1; `codes.len()` a multiple of 256)
/// with scale `d` for every block, appending TQ1_0 blocks to `out`.
///
/// The bytes are those ggml's `quantize_row_tq1_0_ref` produces for
/// `x[i] = codes[i] * d`; see [`encode_tq2_0`] for the scale rules.
///
/// # Panics
/// If `codes.len()` is not a multiple of 256 or a code is not -1, 0 or +1.
pub fn encode_tq1_0(codes: &[i8], d: f32, out: &mut Vec<u8>) {
    encode_with(codes, d, "TQ1_0", TQ1_0_BLOCK_BYTES, pack_tq1_0, out);
}

fn check_len(data: &[u8], block_bytes: usize, name: &str) -> Result<usize> {
    if !data.len().is_multiple_of(block_bytes) {
        bail!(
            "{name} data of {} bytes is not a whole number of {block_bytes}-byte blocks",
            data.len()
        );
    }
    Ok(data.len() / block_bytes)
}

/// Decode TQ2_0 blocks into ternary codes (-1/0/+1, 256 per block) and one
/// scale per block.
///
/// Errors if `data` is not a whole number of 66-byte blocks or a 2-bit field
/// holds 3 (which ggml's quantizer never writes).
pub fn decode_tq2_0(data: &[u8]) -> Result<(Vec<i8>, Vec<f32>)> {
    let nb = check_len(data, TQ2_0_BLOCK_BYTES, "TQ2_0")?;
    let mut codes = vec![0i8; nb * QK_K];
    let mut scales = Vec::with_capacity(nb);
    for (b, (block, dst)) in data
        .chunks_exact(TQ2_0_BLOCK_BYTES)
        .zip(codes.chunks_exact_mut(QK_K))
        .enumerate()
    {
        for (c, (qs, vals)) in block[..TQ2_QS]
            .chunks_exact(32)
            .zip(dst.chunks_exact_mut(128))
            .enumerate()
        {
            for (m, &byte) in qs.iter().enumerate() {
                for n in 0..4 {
                    let q = (byte >> (2 * n)) & 3;
                    if q == 3 {
                        bail!(
                            "TQ2_0 block {b}: byte {} holds the invalid code 3",
                            32 * c + m
                        );
                    }
                    vals[m + 32 * n] = q as i8 - 1;
                }
            }
        }
        scales.push(f16_bits_to_f32(block[TQ2_QS], block[TQ2_QS + 1]));
    }
    Ok((codes, scales))
}

/// Decode TQ1_0 blocks into ternary codes (-1/0/+1, 256 per block) and one
/// scale per block.
///
/// Errors if `data` is not a whole number of 54-byte blocks or a packed byte
/// is not one ggml's quantizer can write: of the 256 byte values, 243 encode
/// five trits in `qs` and 81 encode four trits (plus a zero trit) in `qh`.
pub fn decode_tq1_0(data: &[u8]) -> Result<(Vec<i8>, Vec<f32>)> {
    let nb = check_len(data, TQ1_0_BLOCK_BYTES, "TQ1_0")?;
    let mut codes = vec![0i8; nb * QK_K];
    let mut scales = Vec::with_capacity(nb);
    for (b, (block, dst)) in data
        .chunks_exact(TQ1_0_BLOCK_BYTES)
        .zip(codes.chunks_exact_mut(QK_K))
        .enumerate()
    {
        for g in &TQ1_GROUPS {
            let canonical = if g.trits == 5 {
                &TQ1_CANONICAL_5
            } else {
                &TQ1_CANONICAL_4
            };
            for m in 0..g.width {
                let byte = block[g.byte + m];
                if !canonical[usize::from(byte)] {
                    let field = if g.trits == 5 { "qs" } else { "qh" };
                    bail!(
                        "TQ1_0 block {b}: {field} byte {} = {byte} is not a valid {}-trit encoding",
                        g.byte + m,
                        g.trits
                    );
                }
                for n in 0..g.trits {
                    dst[g.value + m + n * g.width] = tq1_trit(byte, n) as i8 - 1;
                }
            }
        }
        let d = TQ1_QS + TQ1_QH;
        scales.push(f16_bits_to_f32(block[d], block[d + 1]));
    }
    Ok((codes, scales))
}

fn check_quant_len(x: &[f32], name: &str) {
    assert!(
        x.len().is_multiple_of(QK_K),
        "{name} needs a multiple of {QK_K} values, got {}",
        x.len()
    );
}

/// ggml's `quantize_row_tq2_0_ref`: per block, `d = max |x|`, each value
/// stored as `lroundf(x / d) + 1`. Appends the blocks to `out`.
///
/// # Panics
/// If `x.len()` is not a multiple of 256.
pub fn quantize_tq2_0_ref(x: &[f32], out: &mut Vec<u8>) {
    check_quant_len(x, "TQ2_0");
    out.reserve(x.len() / QK_K * TQ2_0_BLOCK_BYTES);
    for block in x.chunks_exact(QK_K) {
        let (digits, d_bits) = ref_block_digits(block);
        pack_tq2_0(&digits, d_bits, out);
    }
}

/// ggml's `quantize_row_tq1_0_ref`: per block, `d = max |x|`, each value
/// stored as the trit `lroundf(x / d) + 1`. Appends the blocks to `out`.
///
/// # Panics
/// If `x.len()` is not a multiple of 256.
pub fn quantize_tq1_0_ref(x: &[f32], out: &mut Vec<u8>) {
    check_quant_len(x, "TQ1_0");
    out.reserve(x.len() / QK_K * TQ1_0_BLOCK_BYTES);
    for block in x.chunks_exact(QK_K) {
        let (digits, d_bits) = ref_block_digits(block);
        pack_tq1_0(&digits, d_bits, out);
    }
}

/// ggml's `dequantize_row_tq2_0`: appends `(q - 1) * d` for every value to
/// `out`. Like ggml, a 2-bit field of 3 yields `2 * d`; only a length that is
/// not a whole number of blocks is an error.
pub fn dequantize_tq2_0(data: &[u8], out: &mut Vec<f32>) -> Result<()> {
    let nb = check_len(data, TQ2_0_BLOCK_BYTES, "TQ2_0")?;
    out.reserve(nb * QK_K);
    for block in data.chunks_exact(TQ2_0_BLOCK_BYTES) {
        let d = f16_bits_to_f32(block[TQ2_QS], block[TQ2_QS + 1]);
        for qs in block[..TQ2_QS].chunks_exact(32) {
            for n in 0..4 {
                out.extend(qs.iter().map(|&byte| {
                    let q = (byte >> (2 * n)) & 3;
                    (f32::from(q) - 1.0) * d
                }));
            }
        }
    }
    Ok(())
}

/// ggml's `dequantize_row_tq1_0`: appends `(trit - 1) * d` for every value to
/// `out`, reading trits with ggml's multiply trick (which gives a trit for
/// any byte, so only a length that is not a whole number of blocks is an
/// error).
pub fn dequantize_tq1_0(data: &[u8], out: &mut Vec<f32>) -> Result<()> {
    let nb = check_len(data, TQ1_0_BLOCK_BYTES, "TQ1_0")?;
    out.reserve(nb * QK_K);
    for block in data.chunks_exact(TQ1_0_BLOCK_BYTES) {
        let db = TQ1_QS + TQ1_QH;
        let d = f16_bits_to_f32(block[db], block[db + 1]);
        for g in &TQ1_GROUPS {
            let bytes = &block[g.byte..g.byte + g.width];
            for n in 0..g.trits {
                out.extend(
                    bytes
                        .iter()
                        .map(|&byte| (f32::from(tq1_trit(byte, n)) - 1.0) * d),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: small deterministic PRNG for tests.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn code(&mut self) -> i8 {
            (self.next_u64() % 3) as i8 - 1
        }
        /// Uniform in [-1, 1).
        fn unit(&mut self) -> f32 {
            ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn codes(&mut self, n: usize) -> Vec<i8> {
            let mut v: Vec<i8> = (0..n).map(|_| self.code()).collect();
            // Make some blocks sparse and some all zero.
            for (b, block) in v.chunks_mut(QK_K).enumerate() {
                match b % 4 {
                    1 => block.iter_mut().for_each(|c| *c = 0),
                    2 => block.iter_mut().for_each(|c| {
                        if !self.next_u64().is_multiple_of(8) {
                            *c = 0
                        }
                    }),
                    _ => {}
                }
            }
            v
        }
    }

    type Encode = fn(&[i8], f32, &mut Vec<u8>);
    type Decode = fn(&[u8]) -> Result<(Vec<i8>, Vec<f32>)>;
    type Quant = fn(&[f32], &mut Vec<u8>);
    type Dequant = fn(&[u8], &mut Vec<f32>) -> Result<()>;

    struct Kind {
        block_bytes: usize,
        encode: Encode,
        decode: Decode,
        quant: Quant,
        dequant: Dequant,
    }

    const KINDS: [Kind; 2] = [
        Kind {
            block_bytes: TQ2_0_BLOCK_BYTES,
            encode: encode_tq2_0,
            decode: decode_tq2_0,
            quant: quantize_tq2_0_ref,
            dequant: dequantize_tq2_0,
        },
        Kind {
            block_bytes: TQ1_0_BLOCK_BYTES,
            encode: encode_tq1_0,
            decode: decode_tq1_0,
            quant: quantize_tq1_0_ref,
            dequant: dequantize_tq1_0,
        },
    ];

    const SCALES: [f32; 8] = [1.0, 0.0123, 3.7e-3, 1.0e4, 0.5, 2.0e-7, 7.0e4, 1.0e-40];

    fn f16_round(d: f32) -> f32 {
        f16::from_f32(d).to_f32()
    }

    #[test]
    fn round_trip_random_codes() {
        let mut rng = Rng(1);
        for kind in &KINDS {
            for &d in &SCALES {
                let codes = rng.codes(QK_K * 8);
                let mut bytes = Vec::new();
                (kind.encode)(&codes, d, &mut bytes);
                assert_eq!(bytes.len(), 8 * kind.block_bytes);
                let (back, scales) = (kind.decode)(&bytes).unwrap();
                let tiny = 1.0 / d == f32::INFINITY;
                for (b, (cb, bb)) in codes.chunks(QK_K).zip(back.chunks(QK_K)).enumerate() {
                    let zero = cb.iter().all(|&c| c == 0);
                    if tiny {
                        // 1/d overflows in ggml: every value rounds to digit 1.
                        assert!(bb.iter().all(|&c| c == 0));
                    } else {
                        assert_eq!(cb, bb, "block {b}, d {d}");
                    }
                    let want = if zero { 0.0 } else { f16_round(d) };
                    assert_eq!(scales[b].to_bits(), want.to_bits(), "block {b}, d {d}");
                }
            }
        }
    }

    #[test]
    fn encode_matches_reference_quantizer() {
        let mut rng = Rng(2);
        for kind in &KINDS {
            for d in SCALES
                .iter()
                .flat_map(|&d| [d, -d])
                .chain([f32::INFINITY, f32::NAN])
            {
                let codes = rng.codes(QK_K * 8);
                let x: Vec<f32> = codes.iter().map(|&c| f32::from(c) * d).collect();
                let (mut enc, mut reference) = (Vec::new(), Vec::new());
                (kind.encode)(&codes, d, &mut enc);
                (kind.quant)(&x, &mut reference);
                assert_eq!(enc, reference, "d {d}");
            }
            // Random scales, including subnormal ones.
            for _ in 0..200 {
                let d = f32::from_bits((rng.next_u64() as u32) & 0x7FFF_FFFF);
                if !d.is_finite() {
                    continue;
                }
                let codes = rng.codes(QK_K * 4);
                let x: Vec<f32> = codes.iter().map(|&c| f32::from(c) * d).collect();
                let (mut enc, mut reference) = (Vec::new(), Vec::new());
                (kind.encode)(&codes, d, &mut enc);
                (kind.quant)(&x, &mut reference);
                assert_eq!(enc, reference, "d {d:e}");
            }
        }
    }

    #[test]
    fn dequantize_matches_codes_times_d() {
        let mut rng = Rng(3);
        for kind in &KINDS {
            for &d in &SCALES[..6] {
                let codes = rng.codes(QK_K * 8);
                let mut bytes = Vec::new();
                (kind.encode)(&codes, d, &mut bytes);
                let mut y = vec![42.0];
                (kind.dequant)(&bytes, &mut y).unwrap();
                assert_eq!(y.len(), 1 + codes.len());
                assert_eq!(y[0], 42.0, "dequantize appends");
                let dh = f16_round(d);
                for (i, (&c, &v)) in codes.iter().zip(&y[1..]).enumerate() {
                    assert_eq!(v, f32::from(c) * dh, "value {i}, d {d}");
                }
            }
        }
    }

    #[test]
    fn quantize_random_floats_rounds_like_ggml() {
        let mut rng = Rng(4);
        for kind in &KINDS {
            let x: Vec<f32> = (0..QK_K * 6).map(|_| rng.unit() * 3.0).collect();
            let mut bytes = Vec::new();
            (kind.quant)(&x, &mut bytes);
            let (codes, scales) = (kind.decode)(&bytes).unwrap();
            let mut y = Vec::new();
            (kind.dequant)(&bytes, &mut y).unwrap();
            for (b, block) in x.chunks(QK_K).enumerate() {
                let amax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                assert_eq!(scales[b], f16_round(amax));
                for (j, &v) in block.iter().enumerate() {
                    let want = (v * (1.0 / amax)).round() as i8;
                    assert_eq!(codes[b * QK_K + j], want);
                    assert_eq!(y[b * QK_K + j], f32::from(want) * scales[b]);
                }
            }
        }
    }

    #[test]
    fn rounding_ties_go_away_from_zero() {
        // amax = 2, so 1.0 and -1.0 scale to ±0.5, which lroundf rounds to
        // ±1; ±0.999 scale to ±0.4995 and round to 0.
        let mut x = vec![0.0f32; QK_K];
        x[0] = 2.0;
        x[1] = 1.0;
        x[2] = -1.0;
        x[3] = 0.999;
        x[4] = -0.999;
        for kind in &KINDS {
            let mut bytes = Vec::new();
            (kind.quant)(&x, &mut bytes);
            let (codes, scales) = (kind.decode)(&bytes).unwrap();
            assert_eq!(&codes[..6], &[1, 1, -1, 0, 0, 0]);
            assert_eq!(scales, vec![2.0]);
        }
    }

    #[test]
    fn all_zero_block_matches_ggml() {
        // amax = 0 → ggml stores d = 0 and id = 0, so every digit is 1.
        let codes = vec![0i8; QK_K];
        for kind in &KINDS {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            (kind.encode)(&codes, 0.75, &mut a);
            (kind.quant)(&[0.0; QK_K], &mut b);
            assert_eq!(a, b);
            assert_eq!(&a[a.len() - 2..], &[0, 0]);
        }
        let mut t2 = Vec::new();
        encode_tq2_0(&codes, 0.75, &mut t2);
        assert!(t2[..64].iter().all(|&v| v == 0x55)); // 0b01_01_01_01
        let mut t1 = Vec::new();
        encode_tq1_0(&codes, 0.75, &mut t1);
        // 11111₃ = 121 → (121·256 + 242) / 243 = 128; 1111₃·3 = 120 → 127.
        assert!(t1[..48].iter().all(|&v| v == 128));
        assert!(t1[48..52].iter().all(|&v| v == 127));
    }

    #[test]
    fn known_answer_tq2_0() {
        // quantize_row_tq2_0_ref: for j in {0, 32} (qs chunks), m < 32,
        // n < 4: qs[j + m] |= (xi & 3) << 2n with xi the digit of
        // x[128·(j/32) + m + 32n]; then d as little-endian f16.
        //
        // Codes: x[0] = +1, x[32] = -1, x[255] = +1, everything else 0.
        // qs[0] holds values 0, 32, 64, 96 → digits 2, 0, 1, 1
        //   → 2 | 0 << 2 | 1 << 4 | 1 << 6 = 0x52.
        // qs[63] holds values 159, 191, 223, 255 → digits 1, 1, 1, 2
        //   → 1 | 1 << 2 | 1 << 4 | 2 << 6 = 0x95.
        // Every other qs byte: digits 1,1,1,1 = 0x55. d = 1.5 → f16 0x3E00.
        let mut codes = vec![0i8; QK_K];
        codes[0] = 1;
        codes[32] = -1;
        codes[255] = 1;
        let mut want = vec![0x55u8; 64];
        want[0] = 0x52;
        want[63] = 0x95;
        want.extend_from_slice(&[0x00, 0x3E]);

        let mut got = Vec::new();
        encode_tq2_0(&codes, 1.5, &mut got);
        assert_eq!(got, want);
        let (back, scales) = decode_tq2_0(&want).unwrap();
        assert_eq!(back, codes);
        assert_eq!(scales, vec![1.5]);
    }

    #[test]
    fn known_answer_tq1_0() {
        // quantize_row_tq1_0_ref: q = Σ digit · 3^(4-n) over the trits of a
        // byte (first value most significant), qh's four trits then times 3,
        // and the byte stored is (q·256 + 242) / 243 (integer division).
        //
        // Codes: x[0] = +1, x[1] = -1, x[160] = +1, x[240] = +1,
        // x[255] = -1, everything else 0 (digit 1).
        // qs[0]  = values 0, 32, 64, 96, 128    → 21111₃ = 202 → 51954/243 = 213
        // qs[1]  = values 1, 33, 65, 97, 129    → 01111₃ = 40  → 10482/243 = 43
        // qs[32] = values 160, 176, 192, 208, 224 → 21111₃ = 202 → 213
        // other qs: 11111₃ = 121 → 31218/243 = 128
        // qh[0] = values 240, 244, 248, 252 → 2111₃ = 67, ×3 = 201
        //   → 51698/243 = 212
        // qh[3] = values 243, 247, 251, 255 → 1110₃ = 39, ×3 = 117
        //   → 30194/243 = 124
        // qh[1], qh[2]: 1111₃ = 40, ×3 = 120 → 30962/243 = 127.
        // d = 0.25 → f16 0x3400.
        let mut codes = vec![0i8; QK_K];
        codes[0] = 1;
        codes[1] = -1;
        codes[160] = 1;
        codes[240] = 1;
        codes[255] = -1;
        let mut want = vec![128u8; 48];
        want[0] = 213;
        want[1] = 43;
        want[32] = 213;
        want.extend_from_slice(&[212, 127, 127, 124]);
        want.extend_from_slice(&[0x00, 0x34]);

        let mut got = Vec::new();
        encode_tq1_0(&codes, 0.25, &mut got);
        assert_eq!(got, want);
        let (back, scales) = decode_tq1_0(&want).unwrap();
        assert_eq!(back, codes);
        assert_eq!(scales, vec![0.25]);

        // The multiply trick on 213: 213·3 >> 8 = 2; 213·3 mod 256 = 127,
        // 127·3 >> 8 = 1; ...
        assert_eq!(
            (0..5).map(|n| tq1_trit(213, n)).collect::<Vec<_>>(),
            [2, 1, 1, 1, 1]
        );
    }

    #[test]
    fn tq1_byte_tables() {
        assert_eq!(TQ1_CANONICAL_5.iter().filter(|&&v| v).count(), 243);
        assert_eq!(TQ1_CANONICAL_4.iter().filter(|&&v| v).count(), 81);
        // Every encodable number decodes back to its own trits.
        for v in 0u8..243 {
            let byte = tq1_scale(v);
            let mut rest = v;
            for n in (0..5).rev() {
                assert_eq!(tq1_trit(byte, n), rest % 3, "v {v}, trit {n}");
                rest /= 3;
            }
        }
        for v in 0u8..81 {
            assert_eq!(tq1_trit(tq1_scale(v * 3), 4), 0);
        }
    }

    #[test]
    fn bad_lengths_error() {
        for kind in &KINDS {
            for len in [
                1,
                kind.block_bytes - 1,
                kind.block_bytes + 1,
                3 * kind.block_bytes - 2,
            ] {
                let data = vec![0x55u8; len];
                assert!((kind.decode)(&data).is_err(), "len {len}");
                assert!((kind.dequant)(&data, &mut Vec::new()).is_err(), "len {len}");
            }
            assert!((kind.decode)(&[]).unwrap().0.is_empty());
        }
    }

    #[test]
    fn invalid_codes_error() {
        let mut bytes = Vec::new();
        encode_tq2_0(&[1; QK_K], 1.0, &mut bytes);
        assert!(bytes[..64].iter().all(|&v| v == 0xAA));
        bytes[17] = 0b1110_1010; // field 3 (value 17 + 96) holds 3
        assert!(decode_tq2_0(&bytes).is_err());
        let mut y = Vec::new();
        dequantize_tq2_0(&bytes, &mut y).unwrap(); // ggml reads it as 2·d
        assert_eq!(y[17 + 96], 2.0);
        assert_eq!(y[17 + 64], 1.0);

        let mut bytes = Vec::new();
        encode_tq1_0(&[1; QK_K], 1.0, &mut bytes);
        assert!(decode_tq1_0(&bytes).is_ok());
        // Non-canonical qs byte: 1 is not (v·256 + 242)/243 for any v.
        let mut bad = bytes.clone();
        bad[5] = 1;
        assert!(decode_tq1_0(&bad).is_err());
        // qh byte whose fifth trit is non-zero: 1₃ (v = 1) → byte 2.
        let mut bad = bytes.clone();
        bad[49] = tq1_scale(1);
        assert!(decode_tq1_0(&bad).is_err());
    }

    #[test]
    #[should_panic]
    fn encode_rejects_bad_code() {
        let mut codes = vec![0i8; QK_K];
        codes[7] = 2;
        encode_tq2_0(&codes, 1.0, &mut Vec::new());
    }

    #[test]
    #[should_panic]
    fn encode_rejects_bad_length() {
        encode_tq1_0(&[0; 100], 1.0, &mut Vec::new());
    }
}

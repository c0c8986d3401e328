//! ggml's Q6_K (type 14) and the Q8_K activation blocks it is multiplied
//! with.
//!
//! A Q6_K block holds 256 values in 210 bytes: `ql[128]` (low four bits),
//! `qh[64]` (high two bits), `scales[16]` (one signed byte per sub-block of
//! 16 values) and the f16 super-block scale `d`; value = `d · scales[j] ·
//! (q − 32)` with `q` in 0..=63. Within each half of 128 values (`ql` bytes
//! `64h..`, `qh` bytes `32h..`), for `l` in 0..32:
//!
//! | value | low bits | high bits |
//! |---|---|---|
//! | `128h + l` | `ql[64h + l] & 15` | `qh[32h + l] & 3` |
//! | `128h + l + 32` | `ql[64h + l + 32] & 15` | `(qh[32h + l] >> 2) & 3` |
//! | `128h + l + 64` | `ql[64h + l] >> 4` | `(qh[32h + l] >> 4) & 3` |
//! | `128h + l + 96` | `ql[64h + l + 32] >> 4` | `qh[32h + l] >> 6` |
//!
//! Quantization is ggml's reference `quantize_row_q6_K_ref` (what
//! llama-quantize writes when no importance matrix is given), operation for
//! operation in f32 without fused multiply-adds: per sub-block the
//! weighted least-squares search `make_qx_quants(16, 32, x, L, rmse_type 1)`
//! (weights `x²`, 19 candidate scales `-(32 + 0.1·is) / max`), then
//! `iscale = -128 / max_scale`, `d = f16(1 / iscale)`, sub-scales
//! `min(127, nearest_int(iscale · scale_j))`, and the quants recomputed
//! with the rounded scales. `nearest_int` is ggml's `1.5·2²³` trick, i.e.
//! round half to even.

use half::f16;

/// Values per super-block.
pub const QK_K: usize = 256;
/// Bytes per Q6_K block.
pub const BLOCK_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
/// Offsets of the parts of a block.
pub const QH_OFF: usize = QK_K / 2;
pub const SC_OFF: usize = QH_OFF + QK_K / 4;
pub const D_OFF: usize = SC_OFF + QK_K / 16;

const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round to nearest, ties to even, for |f| < 2²².
#[inline]
pub fn nearest_int(f: f32) -> i32 {
    let v = f + 12582912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// ggml's `make_qx_quants(n, nmax, x, L, rmse_type = 1, qw = NULL)`:
/// codes `L[i]` in 0..2·nmax and the returned scale.
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Σ w·x·l and Σ w·l² with w = x², in ggml's evaluation order.
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let l = code(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let mut iscale = -nmaxf / max;
    for (o, &v) in l_out.iter_mut().zip(x) {
        *o = (code(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1f32 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in l_out.iter_mut().zip(x) {
                *o = (code(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Quantize one block of 256 values into `out` (210 bytes).
pub fn quantize_block(x: &[f32], out: &mut [u8]) {
    assert_eq!(x.len(), QK_K);
    assert_eq!(out.len(), BLOCK_BYTES);
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let mut max_scale = 0f32;
    let mut max_abs_scale = 0f32;
    for (ib, s) in scales.iter_mut().enumerate() {
        *s = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        let a = s.abs();
        if a > max_abs_scale {
            max_abs_scale = a;
            max_scale = *s;
        }
    }
    out.fill(0);
    if max_abs_scale < GROUP_MAX_EPS {
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    out[D_OFF..].copy_from_slice(&d.to_le_bytes());
    let mut sc = [0i8; QK_K / 16];
    for (o, &s) in sc.iter_mut().zip(&scales) {
        // In -128..=128 since |s| ≤ max_abs_scale; 128 is capped.
        *o = nearest_int(iscale * s).min(127) as i8;
    }
    let df = d.to_f32();
    for (j, &s) in sc.iter().enumerate() {
        let dj = df * s as f32;
        if dj == 0.0 {
            // ggml keeps the codes of `make_qx_quants` for such sub-blocks.
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / dj).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    for (j, s) in sc.iter().enumerate() {
        out[SC_OFF + j] = *s as u8;
    }
    let lu = |i: usize| l[i] as u8;
    for h in 0..2 {
        let (j, ql, qh) = (128 * h, 64 * h, QH_OFF + 32 * h);
        for i in 0..32 {
            out[ql + i] = (lu(j + i) & 0xF) | ((lu(j + i + 64) & 0xF) << 4);
            out[ql + i + 32] = (lu(j + i + 32) & 0xF) | ((lu(j + i + 96) & 0xF) << 4);
            out[qh + i] = (lu(j + i) >> 4)
                | ((lu(j + i + 32) >> 4) << 2)
                | ((lu(j + i + 64) >> 4) << 4)
                | ((lu(j + i + 96) >> 4) << 6);
        }
    }
}

/// Quantize `x` (a multiple of 256 values) and append the blocks to `out`.
pub fn quantize(x: &[f32], out: &mut Vec<u8>) {
    assert!(
        x.len().is_multiple_of(QK_K),
        "Q6_K needs a multiple of 256 values"
    );
    let start = out.len();
    out.resize(start + x.len() / QK_K * BLOCK_BYTES, 0);
    for (xb, ob) in x
        .chunks_exact(QK_K)
        .zip(out[start..].chunks_exact_mut(BLOCK_BYTES))
    {
        quantize_block(xb, ob);
    }
}

/// The 6-bit codes (0..=63) of one block, in value order.
#[inline]
pub fn codes(b: &[u8]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for h in 0..2 {
        let (j, ql, qh) = (128 * h, 64 * h, QH_OFF + 32 * h);
        for i in 0..32 {
            let (lo, hi, hb) = (b[ql + i], b[ql + i + 32], b[qh + i]);
            q[j + i] = (lo & 0xF) | ((hb & 3) << 4);
            q[j + i + 32] = (hi & 0xF) | (((hb >> 2) & 3) << 4);
            q[j + i + 64] = (lo >> 4) | (((hb >> 4) & 3) << 4);
            q[j + i + 96] = (hi >> 4) | ((hb >> 6) << 4);
        }
    }
    q
}

/// The f16 super-block scale of a block, as f32.
#[inline]
pub fn block_d(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[D_OFF], b[D_OFF + 1]]).to_f32()
}

/// Dequantize whole blocks (`data.len()` = `out.len() / 256 · 210`), as
/// ggml does: `d · scale · (q − 32)`, left to right.
pub fn dequantize(data: &[u8], out: &mut [f32]) {
    dequantize_with(data, out, codes)
}

/// Dequantize whole blocks whose codes in value order `codes_of` reads.
fn dequantize_with(data: &[u8], out: &mut [f32], codes_of: fn(&[u8]) -> [u8; QK_K]) {
    assert!(out.len().is_multiple_of(QK_K));
    assert_eq!(data.len(), out.len() / QK_K * BLOCK_BYTES);
    for (b, o) in data
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let d = block_d(b);
        let q = codes_of(b);
        for (i, v) in o.iter_mut().enumerate() {
            let s = b[SC_OFF + i / 16] as i8 as f32;
            *v = d * s * (q[i] as i32 - 32) as f32;
        }
    }
}

/// tern's load-time layout of a Q6_K block ("repacked"): the same 210
/// bytes, the scales and `d` where ggml has them ([`SC_OFF`], [`D_OFF`]),
/// the 192 bytes of codes rearranged so that a SIMD kernel unpacks them with
/// fewer operations and applies the sixteen sub-block scales without
/// shuffling them for every 32 codes.
///
/// *Positions.* The 256 values are put in "lane order": value `n = 128h +
/// 16m + 4k + e` (half `h`, sub-block `8h + m`, `m`, `k`, `e` in 0..8,
/// 0..4, 0..4) goes to position `p = 128h + 32k + 4m + e`
/// ([`lane_position`]). So each 32 positions `128h + 32k ..` hold four
/// values of each of the half's eight sub-blocks, four consecutive
/// positions per sub-block: a 4-byte group is one sub-block, the same one
/// for every `k`, as `vpmaddubsw` + `vpmaddwd` and `sdot` / `vpdpbusd` sum
/// them. The Q8_K activations are put in the same order
/// ([`order_q8_k`]); a dot product is a sum over positions, so its value
/// (and the integer per block) is the same in either order.
///
/// *Codes.* Position `128h + 32c + l` (`c` in 0..3, `l` in 0..32) is byte
/// `96h + 32c + l`, low six bits; position `128h + 96 + l` is split over the
/// top two bits of those three bytes: bits 4–5 in byte `c = 0`, bits 2–3
/// in `c = 1`, bits 0–1 in `c = 2`. Unpacking 128 codes takes three masks
/// for the first 96, and three masks, three shifts and two ors for the
/// last 32 (`((A & 0xC0) | (B & 0xC0) >> 2 | (C & 0xC0) >> 4) >> 2`,
/// shifts that never carry a bit across bytes), where ggml's `ql`/`qh`
/// split takes seventeen.
///
/// Only tern's kernels read it; files keep ggml's layout.
pub const fn lane_position(n: usize) -> usize {
    let (h, m, k, e) = (n / 128, n % 128 / 16, n % 16 / 4, n % 4);
    128 * h + 32 * k + 4 * m + e
}

/// The sub-block (0..16) of the value at lane-order position `p`.
#[inline]
pub const fn lane_sub_block(p: usize) -> usize {
    8 * (p / 128) + p % 32 / 4
}

/// Rearrange whole ggml Q6_K blocks into tern's load-time layout (see
/// [`lane_position`]), in place. Panics unless `blocks` is whole blocks.
pub fn repack(blocks: &mut [u8]) {
    assert!(
        blocks.len().is_multiple_of(BLOCK_BYTES),
        "Q6_K data is not whole blocks"
    );
    for b in blocks.chunks_exact_mut(BLOCK_BYTES) {
        let lane = to_lane_order(&codes(b));
        for h in 0..2 {
            let half: &[u8; 128] = lane[128 * h..128 * h + 128].try_into().unwrap();
            let out: &mut [u8; 96] = (&mut b[96 * h..96 * h + 96]).try_into().unwrap();
            for c in 0..3 {
                for l in 0..32 {
                    let hi = (half[96 + l] >> (4 - 2 * c)) & 3;
                    out[32 * c + l] = half[32 * c + l] | (hi << 6);
                }
            }
        }
    }
}

/// The 6-bit codes of one block in tern's load-time layout, in lane order
/// (position `p` as [`lane_position`] numbers it).
#[inline]
pub fn lane_codes(b: &[u8]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for h in 0..2 {
        for l in 0..32 {
            let byte = |c: usize| b[96 * h + 32 * c + l];
            let mut top = 0u8;
            for c in 0..3 {
                q[128 * h + 32 * c + l] = byte(c) & 63;
                top |= (byte(c) >> 6) << (4 - 2 * c);
            }
            q[128 * h + 96 + l] = top;
        }
    }
    q
}

/// Dequantize whole blocks in tern's load-time layout into value order:
/// the same numbers as [`dequantize`] gives for the ggml blocks they came
/// from.
pub fn dequantize_repacked(data: &[u8], out: &mut [f32]) {
    dequantize_with(data, out, |b| {
        let lane = lane_codes(b);
        std::array::from_fn(|n| lane[lane_position(n)])
    })
}

/// Put Q8_K quants (whole blocks of 256, value order) into the lane order
/// of tern's load-time Q6_K layout, in place. The block scales and the
/// sums of 16 do not move (each sum is still its sub-block's).
pub fn order_q8_k(qs: &mut [i8]) {
    assert!(qs.len().is_multiple_of(QK_K));
    for blk in qs.chunks_exact_mut(QK_K) {
        let lane = to_lane_order(blk);
        blk.copy_from_slice(&lane);
    }
}

/// One block's 256 values (value order) in lane order
/// ([`lane_position`]): groups of four values move whole, `(h, m, k)` to
/// `(h, k, m)`.
fn to_lane_order<T: Copy + Default>(v: &[T]) -> [T; QK_K] {
    let mut lane = [T::default(); QK_K];
    for (g, four) in v[..QK_K].chunks_exact(4).enumerate() {
        let p = lane_position(4 * g);
        lane[p..p + 4].copy_from_slice(four);
    }
    lane
}

/// Values per Q8_K block (= [`QK_K`]) and its sub-block sums.
pub const Q8K_BSUMS: usize = QK_K / 16;

/// Quantize activations to Q8_K blocks, as ggml's `quantize_row_q8_K_ref`:
/// per 256 values, `max` = the value of largest magnitude (first one on
/// ties), `iscale = -127 / max`, `q = min(127, nearest_int(iscale · x))`,
/// `d = 1 / iscale` kept in f32, and the sums of each 16 quants. An
/// all-zero block gets `d = 0` and zero quants. Every quant is in -127..=127.
pub fn quantize_q8_k(x: &[f32], qs: &mut [i8], ds: &mut [f32], bsums: &mut [i16]) {
    assert!(x.len().is_multiple_of(QK_K) && qs.len() == x.len());
    assert_eq!(ds.len(), x.len() / QK_K);
    assert_eq!(bsums.len(), x.len() / 16);
    for (((xb, qb), d), bs) in x
        .chunks_exact(QK_K)
        .zip(qs.chunks_exact_mut(QK_K))
        .zip(ds.iter_mut())
        .zip(bsums.chunks_exact_mut(Q8K_BSUMS))
    {
        let mut max = 0f32;
        let mut amax = 0f32;
        for &v in xb {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax == 0.0 {
            *d = 0.0;
            qb.fill(0);
            bs.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, q16) in bs.iter_mut().zip(qb.chunks_exact(16)) {
            *s = q16.iter().map(|&q| q as i16).sum();
        }
        *d = 1.0 / iscale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_is_half_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-2.6), -3);
        assert_eq!(nearest_int(31.49), 31);
    }

    #[test]
    fn round_trip_is_close() {
        let mut s = 5u32;
        let x: Vec<f32> = (0..512)
            .map(|_| {
                s = s.wrapping_mul(747796405).wrapping_add(2891336453);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        let mut b = Vec::new();
        quantize(&x, &mut b);
        assert_eq!(b.len(), 2 * BLOCK_BYTES);
        let mut y = vec![0f32; 512];
        dequantize(&b, &mut y);
        let err: f32 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        // 6-bit codes over ±0.5: steps of about 1/64.
        assert!(err < 0.02, "max error {}", err);
    }

    #[test]
    fn zero_block_is_all_zero_bytes() {
        let mut b = Vec::new();
        quantize(&[0f32; 256], &mut b);
        assert!(b.iter().all(|&v| v == 0));
    }
    #[test]
    fn lane_order_is_a_permutation_keeping_sub_blocks() {
        let mut seen = [false; QK_K];
        for n in 0..QK_K {
            let p = lane_position(n);
            assert!(!seen[p], "position {} twice", p);
            seen[p] = true;
            assert_eq!(lane_sub_block(p), n / 16, "value {}", n);
        }
    }

    #[test]
    fn repacked_blocks_keep_every_code_and_value() {
        let mut s = 11u32;
        let mut rnd = || {
            s = s.wrapping_mul(747796405).wrapping_add(2891336453);
            (s >> 24) as u8
        };
        let ggml: Vec<u8> = (0..3 * BLOCK_BYTES).map(|_| rnd()).collect();
        let mut ours = ggml.clone();
        repack(&mut ours);
        for (g, o) in ggml
            .chunks_exact(BLOCK_BYTES)
            .zip(ours.chunks_exact(BLOCK_BYTES))
        {
            assert_eq!(g[SC_OFF..], o[SC_OFF..], "scales and d stay");
            let (qg, qo) = (codes(g), lane_codes(o));
            for n in 0..QK_K {
                assert_eq!(qg[n], qo[lane_position(n)], "value {}", n);
            }
        }
        let (mut want, mut got) = (vec![0f32; 768], vec![0f32; 768]);
        dequantize(&ggml, &mut want);
        dequantize_repacked(&ours, &mut got);
        assert_eq!(
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        let mut a: Vec<i8> = (0..512).map(|i| (i % 255) as i8).collect();
        let natural = a.clone();
        order_q8_k(&mut a);
        for n in 0..512 {
            assert_eq!(a[n / 256 * 256 + lane_position(n % 256)], natural[n]);
        }
    }
}

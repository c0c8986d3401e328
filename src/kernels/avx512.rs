//! AVX-512 ternary kernels (x86_64, AVX-512 F + BW, and VNNI where
//! present), selected at run time. No machine this was developed on has
//! AVX-512: the code is runtime-detected and covered by tests/kernels.rs
//! wherever it runs, but unverified until then (see the README).
//!
//! Layout use: one packed group block (128 bytes) is two 64-byte vectors,
//! rows 0|1 and rows 2|3. Each 32-byte activation chunk is broadcast to
//! both 256-bit halves, so every lane multiplies a code with its own
//! activation. Without VNNI the products are summed exactly as in the AVX2
//! kernel (16-bit `vpmaddubsw` pair sums over at most [`CHUNK`] blocks, then
//! widened); with VNNI `vpdpbusd` accumulates the u8×i8 products straight
//! into 32 bits. Both give the exact integer sum. The float operations and
//! the quantized (Q8_0 / Q6_K) output head use the AVX2 code (every
//! AVX-512 CPU has AVX2, FMA and F16C).

use super::avx2::Avx2;
use super::ops::Kv;
use super::{BlockActs, Kernel, Packed, GROUP, GROUP_BLOCK_BYTES, QK};
use half::f16;
use std::arch::x86_64::*;

pub struct Avx512 {
    vnni: bool,
}

static WITH_VNNI: Avx512 = Avx512 { vnni: true };
static BW: Avx512 = Avx512 { vnni: false };

/// Blocks summed in 16-bit lanes before widening (non-VNNI path).
const CHUNK: usize = 8;
/// Tokens per register tile.
const TILE_T: usize = 4;
/// Row groups sharing one token tile.
const GROUP_BLOCK: usize = 8;

impl Avx512 {
    pub fn detect() -> bool {
        Avx2::detect()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
    }
    /// The best AVX-512 kernel for this CPU, if it has AVX-512 F + BW.
    pub fn get() -> Option<&'static Avx512> {
        Self::variants().pop()
    }
    /// Every AVX-512 variant this CPU can run (for tests).
    pub fn variants() -> Vec<&'static Avx512> {
        let mut v = Vec::new();
        if Self::detect() {
            v.push(&BW);
            if is_x86_feature_detected!("avx512vnni") {
                v.push(&WITH_VNNI);
            }
        }
        v
    }
}

impl Kernel for Avx512 {
    fn name(&self) -> &'static str {
        "avx512"
    }
    fn variant(&self) -> &'static str {
        if self.vnni {
            "avx512vnni"
        } else {
            "avx512bw"
        }
    }
    fn i2s_gemm(&self, w: &Packed, g0: usize, g1: usize, xs: &[i8], sums: &[i32], out: &mut [i32]) {
        super::check_gemm(w, g0, g1, xs, sums, out);
        // SAFETY: an `Avx512` is only handed out by `variants` after
        // `detect` (AVX-512 F/BW, AVX2), the VNNI one only when the CPU has
        // VNNI. `check_gemm` asserted the sizes the pointer arithmetic
        // relies on.
        unsafe {
            if self.vnni {
                gemm_vnni(w, g0, g1, xs, sums, out)
            } else {
                gemm_bw(w, g0, g1, xs, sums, out)
            }
        }
    }
    fn f16_gemm(
        &self,
        w: &[f16],
        d: usize,
        v0: usize,
        v1: usize,
        xs: &[f32],
        n: usize,
        out: &mut [f32],
    ) {
        Avx2.f16_gemm(w, d, v0, v1, xs, n, out)
    }
    fn f32_gemm(
        &self,
        w: &[f32],
        d: usize,
        v0: usize,
        v1: usize,
        xs: &[f32],
        n: usize,
        out: &mut [f32],
    ) {
        Avx2.f32_gemm(w, d, v0, v1, xs, n, out)
    }
    fn quantize_act(&self, x: &[f32], q: &mut [i8]) -> (f32, i32) {
        Avx2.quantize_act(x, q)
    }
    fn q8_0_block_dots(&self, w: &[u8], a: &[i8], out: &mut [i32]) {
        Avx2.q8_0_block_dots(w, a, out)
    }
    fn q6_k_block_dots(&self, w: &[u8], a: &[i8], bsums: &[i16], out: &mut [i32]) {
        Avx2.q6_k_block_dots(w, a, bsums, out)
    }
    fn q8_0_gemm(&self, w: &[u8], v0: usize, v1: usize, x: &BlockActs, out: &mut [f32]) {
        Avx2.q8_0_gemm(w, v0, v1, x, out)
    }
    fn q6_k_gemm(&self, w: &[u8], v0: usize, v1: usize, x: &BlockActs, out: &mut [f32]) {
        Avx2.q6_k_gemm(w, v0, v1, x, out)
    }
    fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        Avx2.dot_f32(a, b)
    }
    fn dot_f16(&self, a: &[f16], b: &[f32]) -> f32 {
        Avx2.dot_f16(a, b)
    }
    fn axpy_f16(&self, p: f32, x: &[f16], y: &mut [f32]) {
        Avx2.axpy_f16(p, x, y)
    }
    fn axpy_f32(&self, p: f32, x: &[f32], y: &mut [f32]) {
        Avx2.axpy_f32(p, x, y)
    }
    fn attn_scores(
        &self,
        k: Kv,
        stride: usize,
        off: usize,
        q: &[f32],
        scale: f32,
        scores: &mut [f32],
    ) {
        Avx2.attn_scores(k, stride, off, q, scale, scores)
    }
    fn attn_values(&self, v: Kv, stride: usize, off: usize, p: &[f32], out: &mut [f32]) {
        Avx2.attn_values(v, stride, off, p, out)
    }
}

/// Generates the GEMM driver and its register tile for one feature set
/// (`$vnni`: accumulate with `vpdpbusd`). Two copies, so the non-VNNI code is
/// never compiled with VNNI enabled.
macro_rules! gemm_impl {
    ($gemm:ident, $tile:ident, $feat:literal, $vnni:literal) => {
        #[target_feature(enable = $feat)]
        unsafe fn $gemm(
            w: &Packed,
            g0: usize,
            g1: usize,
            xs: &[i8],
            sums: &[i32],
            out: &mut [i32],
        ) {
            let n = sums.len();
            let k = w.cols();
            let nb = w.blocks();
            let ld = GROUP * (g1 - g0);
            let gstride = nb * GROUP_BLOCK_BYTES;
            let wbase = w.group_bytes(g0, g1).as_ptr();
            let xp = xs.as_ptr();
            let op = out.as_mut_ptr();
            let sp = sums.as_ptr();
            let mut gb = 0;
            while gb < g1 - g0 {
                let ge = (gb + GROUP_BLOCK).min(g1 - g0);
                let mut t = 0;
                while t < n {
                    let tt = (n - t).min(TILE_T);
                    for g in gb..ge {
                        let wp = wbase.add(g * gstride);
                        let o = op.add(t * ld + g * GROUP);
                        let x0 = xp.add(t * k);
                        match tt {
                            1 => $tile::<1>(wp, nb, x0, k, sp.add(t), o, ld),
                            2 => $tile::<2>(wp, nb, x0, k, sp.add(t), o, ld),
                            3 => $tile::<3>(wp, nb, x0, k, sp.add(t), o, ld),
                            _ => $tile::<4>(wp, nb, x0, k, sp.add(t), o, ld),
                        }
                    }
                    t += tt;
                }
                gb = ge;
            }
        }

        /// One packed group × `T` tokens; `out[t·ld + r]` = dot − sums[t].
        #[target_feature(enable = $feat)]
        #[inline]
        #[allow(clippy::needless_range_loop)]
        unsafe fn $tile<const T: usize>(
            wp: *const u8,
            nb: usize,
            x0: *const i8,
            k: usize,
            sums: *const i32,
            out: *mut i32,
            ld: usize,
        ) {
            let ones = _mm512_set1_epi16(1);
            // acc32[t][p][j]: 32-bit sums of token t, row pair p (rows
            // 2p | 2p+1); with VNNI two chains j (even / odd fields) so the
            // `vpdpbusd` latency does not bound one token's loop.
            let mut acc32 = [[[_mm512_setzero_si512(); 2]; 2]; T];
            let mut b = 0;
            while b < nb {
                let be = if $vnni { nb } else { (b + CHUNK).min(nb) };
                let mut acc = [[_mm512_setzero_si512(); 2]; T];
                for bi in b..be {
                    let wb = wp.add(bi * GROUP_BLOCK_BYTES);
                    if T == 1 {
                        // One token streams the weights once: prefetch both
                        // lines of the run 16 KiB ahead into L2, as the AVX2
                        // kernel does (a hint only, so `wrapping_add`).
                        let a = wb.wrapping_add(16 << 10) as *const i8;
                        _mm_prefetch::<_MM_HINT_T1>(a);
                        _mm_prefetch::<_MM_HINT_T1>(a.wrapping_add(64));
                    }
                    let c = [
                        codes(_mm512_loadu_si512(wb as *const __m512i)),
                        codes(_mm512_loadu_si512(wb.add(64) as *const __m512i)),
                    ];
                    for t in 0..T {
                        let xb = x0.add(t * k + bi * QK);
                        for i in 0..4 {
                            let xv = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                                xb.add(32 * i) as *const __m256i
                            ));
                            for p in 0..2 {
                                if $vnni {
                                    let a = &mut acc32[t][p][i & 1];
                                    *a = _mm512_dpbusd_epi32(*a, c[p][i], xv);
                                } else {
                                    acc[t][p] = _mm512_add_epi16(
                                        acc[t][p],
                                        _mm512_maddubs_epi16(c[p][i], xv),
                                    );
                                }
                            }
                        }
                    }
                }
                if !$vnni {
                    for t in 0..T {
                        for p in 0..2 {
                            acc32[t][p][0] = _mm512_add_epi32(
                                acc32[t][p][0],
                                _mm512_madd_epi16(acc[t][p], ones),
                            );
                        }
                    }
                }
                b = be;
            }
            for t in 0..T {
                let p0 = _mm512_add_epi32(acc32[t][0][0], acc32[t][0][1]);
                let p1 = _mm512_add_epi32(acc32[t][1][0], acc32[t][1][1]);
                // Lower 256 bits of pair p belong to row 2p, upper to row 2p+1.
                let r0 = _mm512_castsi512_si256(p0);
                let r1 = _mm512_extracti64x4_epi64::<1>(p0);
                let r2 = _mm512_castsi512_si256(p1);
                let r3 = _mm512_extracti64x4_epi64::<1>(p1);
                let s = _mm256_hadd_epi32(_mm256_hadd_epi32(r0, r1), _mm256_hadd_epi32(r2, r3));
                let r = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
                let r = _mm_sub_epi32(r, _mm_set1_epi32(*sums.add(t)));
                _mm_storeu_si128(out.add(t * ld) as *mut __m128i, r);
            }
        }
    };
}

gemm_impl!(gemm_bw, tile_bw, "avx512f,avx512bw,avx2", false);
gemm_impl!(
    gemm_vnni,
    tile_vnni,
    "avx512f,avx512bw,avx512vnni,avx2",
    true
);

/// The four code vectors (0..3 per byte) of a 64-byte vector holding two
/// rows' 32-byte blocks.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn codes(wv: __m512i) -> [__m512i; 4] {
    let mask = _mm512_set1_epi8(3);
    [
        _mm512_and_si512(_mm512_srli_epi16::<6>(wv), mask),
        _mm512_and_si512(_mm512_srli_epi16::<4>(wv), mask),
        _mm512_and_si512(_mm512_srli_epi16::<2>(wv), mask),
        _mm512_and_si512(wv, mask),
    ]
}

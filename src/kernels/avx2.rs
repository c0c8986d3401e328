//! AVX2 kernels (x86_64), selected at run time.

use super::Kernel;
use std::arch::x86_64::*;

pub struct Avx2;

impl Avx2 {
    pub fn detect() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
}

impl Kernel for Avx2 {
    fn name(&self) -> &'static str {
        "avx2"
    }
    fn dot_i2s(&self, w: &[u8], x: &[i8], x_sum: i32) -> i32 {
        assert!(w.len() % 32 == 0 && x.len() == w.len() * 4);
        // SAFETY: `Avx2` is only handed out by `kernels::available`, which
        // checks the CPU supports AVX2 and FMA; lengths are asserted above so
        // every 32-byte load stays inside `w` and `x`.
        unsafe { dot_i2s_avx2(w, x) - x_sum }
    }
    fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: CPU support checked at selection; loads stay below `n`.
        unsafe { dot_f32_avx2(&a[..n], &b[..n]) }
    }
    fn dot_f16(&self, a: &[half::f16], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        if !is_x86_feature_detected!("f16c") {
            return super::scalar::dot_f16(a, b);
        }
        // SAFETY: F16C checked just above, AVX2/FMA at selection; loads stay below `n`.
        unsafe { dot_f16_avx2(&a[..n], &b[..n]) }
    }
}

#[target_feature(enable = "avx2")]
unsafe fn dot_i2s_avx2(w: &[u8], x: &[i8]) -> i32 {
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    let blocks = w.len() / 32;
    let wp = w.as_ptr();
    let xp = x.as_ptr();
    for b in 0..blocks {
        let wv = _mm256_loadu_si256(wp.add(b * 32) as *const __m256i);
        let c0 = _mm256_and_si256(_mm256_srli_epi16(wv, 6), mask);
        let c1 = _mm256_and_si256(_mm256_srli_epi16(wv, 4), mask);
        let c2 = _mm256_and_si256(_mm256_srli_epi16(wv, 2), mask);
        let c3 = _mm256_and_si256(wv, mask);
        let xb = xp.add(b * 128);
        let x0 = _mm256_loadu_si256(xb as *const __m256i);
        let x1 = _mm256_loadu_si256(xb.add(32) as *const __m256i);
        let x2 = _mm256_loadu_si256(xb.add(64) as *const __m256i);
        let x3 = _mm256_loadu_si256(xb.add(96) as *const __m256i);
        // codes are 0..2 (unsigned), x is signed: |pair sum| ≤ 2·2·128 = 512.
        let p0 = _mm256_maddubs_epi16(c0, x0);
        let p1 = _mm256_maddubs_epi16(c1, x1);
        let p2 = _mm256_maddubs_epi16(c2, x2);
        let p3 = _mm256_maddubs_epi16(c3, x3);
        let s = _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s, ones));
    }
    hsum_i32(acc)
}

#[target_feature(enable = "avx2")]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let lo = _mm256_castsi256_si128(v);
    let hi = _mm256_extracti128_si256(v, 1);
    let s = _mm_add_epi32(lo, hi);
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn hsum_f32(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        acc0 = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.as_ptr().add(i)),
            _mm256_loadu_ps(b.as_ptr().add(i)),
            acc0,
        );
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.as_ptr().add(i + 8)),
            _mm256_loadu_ps(b.as_ptr().add(i + 8)),
            acc1,
        );
        i += 16;
    }
    let mut s = hsum_f32(_mm256_add_ps(acc0, acc1));
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(a: &[half::f16], b: &[f32]) -> f32 {
    let n = a.len();
    let ap = a.as_ptr() as *const u16;
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        let h0 = _mm256_cvtph_ps(_mm_loadu_si128(ap.add(i) as *const __m128i));
        let h1 = _mm256_cvtph_ps(_mm_loadu_si128(ap.add(i + 8) as *const __m128i));
        acc0 = _mm256_fmadd_ps(h0, _mm256_loadu_ps(b.as_ptr().add(i)), acc0);
        acc1 = _mm256_fmadd_ps(h1, _mm256_loadu_ps(b.as_ptr().add(i + 8)), acc1);
        i += 16;
    }
    let mut s = hsum_f32(_mm256_add_ps(acc0, acc1));
    while i < n {
        s += a[i].to_f32() * b[i];
        i += 1;
    }
    s
}

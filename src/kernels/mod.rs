//! Compute kernels behind one trait. `scalar` is the reference; every SIMD
//! implementation must return bit-identical integers for the ternary dots
//! and is tested against it.
//!
//! Ternary weights use the canonical I2_S block layout per row (see
//! `quant::i2s`): a row of K values is K/128 blocks of 32 bytes, value `j`
//! of a block at byte `j % 32`, bits `6 - 2 (j / 32)`, code = T + 1.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
pub mod matmul;
pub mod scalar;

use std::sync::OnceLock;

pub trait Kernel: Send + Sync {
    fn name(&self) -> &'static str;

    /// Σ_k T[k]·x[k] for one I2_S row `w` (K/4 bytes) and int8 activations
    /// `x` (K values, K a multiple of 128). `x_sum` is Σ x[k].
    fn dot_i2s(&self, w: &[u8], x: &[i8], x_sum: i32) -> i32;

    /// One weight row against `n` activation rows of length `k` laid out
    /// back to back in `xs`; `out[j]` = dot with row j.
    fn dot_i2s_rows(&self, w: &[u8], xs: &[i8], sums: &[i32], k: usize, out: &mut [i32]) {
        for (j, o) in out.iter_mut().enumerate() {
            *o = self.dot_i2s(w, &xs[j * k..(j + 1) * k], sums[j]);
        }
    }

    /// Per-token activation quantization (docs §2): `a = 127 / max(|x|, 1e-5)`,
    /// `q = clamp(round_half_even(x·a), -128, 127)`. Returns (a, Σq).
    fn quantize_act(&self, x: &[f32], q: &mut [i8]) -> (f32, i32) {
        scalar::quantize_act(x, q)
    }

    fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        scalar::dot_f32(a, b)
    }

    /// Dot of little-endian f16 values (`a`, 2 bytes each) with f32 values.
    fn dot_f16(&self, a: &[half::f16], b: &[f32]) -> f32 {
        scalar::dot_f16(a, b)
    }
}

/// Kernel names that can be forced with `TERN_KERNEL`.
pub fn available() -> Vec<&'static dyn Kernel> {
    let mut v: Vec<&'static dyn Kernel> = vec![&scalar::Scalar];
    #[cfg(target_arch = "x86_64")]
    if avx2::Avx2::detect() {
        v.push(&avx2::Avx2);
    }
    v
}

/// The kernel in use: `TERN_KERNEL` if set (error if unavailable), else the
/// best the CPU supports.
pub fn select(name: Option<&str>) -> anyhow::Result<&'static dyn Kernel> {
    let all = available();
    match name {
        Some(n) => all.into_iter().find(|k| k.name() == n).ok_or_else(|| {
            anyhow::anyhow!(
                "kernel {:?} is not available on this CPU (have: {})",
                n,
                available()
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }),
        None => Ok(*all.last().expect("scalar always available")),
    }
}

static ACTIVE: OnceLock<&'static dyn Kernel> = OnceLock::new();

/// The process-wide kernel, chosen once from `TERN_KERNEL` or the CPU.
pub fn active() -> anyhow::Result<&'static dyn Kernel> {
    if let Some(k) = ACTIVE.get() {
        return Ok(*k);
    }
    let env = std::env::var("TERN_KERNEL").ok();
    let k = select(env.as_deref().filter(|s| !s.is_empty()))?;
    Ok(*ACTIVE.get_or_init(|| k))
}

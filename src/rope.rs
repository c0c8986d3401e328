//! RoPE frequencies, with the `rope_scaling` types tern applies. Shared by
//! the converter (llama3's factors become the `rope_freqs.weight` tensor, as
//! llama.cpp's converter writes them) and the runtime.
//!
//! Formulas: transformers' `modeling_rope_utils` (`_compute_linear_scaling`,
//! `_compute_llama3_parameters`, `_compute_yarn_parameters`), which llama.cpp
//! computes the same way (`ggml_rope_yarn_corr_dims`, `rope_yarn_ramp`).

use crate::hf::config::RopeScaling;
use std::f64::consts::PI;

/// The unscaled inverse frequency of pair `i` of a `dims`-wide rotation:
/// `θ^(−2i/dims)`.
fn base_freq(theta: f32, i: usize, dims: usize) -> f64 {
    libm::pow(theta as f64, -2.0 * i as f64 / dims as f64)
}

/// Llama 3.1's per-pair divisors (GGUF `rope_freqs.weight`, `dims / 2`
/// values): 1 for high frequencies (wavelength < original context /
/// high_freq_factor), `factor` for low ones (wavelength > original context /
/// low_freq_factor), and between them the smooth blend
/// `1 / ((1 − s)/factor + s)` with `s = (orig/λ − low) / (high − low)`.
/// All ones for any other scaling type.
pub fn llama3_freq_factors(dims: usize, theta: f32, scaling: RopeScaling) -> Vec<f32> {
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_context,
    } = scaling
    else {
        return vec![1.0; dims / 2];
    };
    let (factor, low, high, orig) = (
        factor as f64,
        low_freq_factor as f64,
        high_freq_factor as f64,
        original_context as f64,
    );
    let low_wavelen = orig / low;
    let high_wavelen = orig / high;
    (0..dims / 2)
        .map(|i| {
            let wavelen = 2.0 * PI / base_freq(theta, i, dims);
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let s = (orig / wavelen - low) / (high - low);
                1.0 / ((1.0 - s) / factor + s)
            };
            f as f32
        })
        .collect()
}

/// Per-pair inverse frequencies and the factor cos/sin are multiplied by.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeFreqs {
    /// `dims / 2` inverse frequencies (angle = position × freq).
    pub inv_freq: Vec<f64>,
    /// YaRN's attention factor (`0.1·ln(factor) + 1`), else 1.
    pub mscale: f32,
}

/// How one model rotates: base, rotated width, scaling, and the
/// `rope_freqs.weight` divisors if the file has them.
pub fn freqs(
    dims: usize,
    theta: f32,
    scaling: RopeScaling,
    freq_factors: Option<&[f32]>,
) -> RopeFreqs {
    let half = dims / 2;
    let mut inv_freq: Vec<f64> = (0..half).map(|i| base_freq(theta, i, dims)).collect();
    if let Some(ff) = freq_factors {
        for (f, &d) in inv_freq.iter_mut().zip(ff) {
            *f /= d as f64;
        }
    }
    let mut mscale = 1.0f32;
    match scaling {
        RopeScaling::None | RopeScaling::Llama3 { .. } => {}
        RopeScaling::Linear { factor } => {
            for f in &mut inv_freq {
                *f /= factor as f64;
            }
        }
        RopeScaling::Yarn {
            factor,
            original_context,
        } => {
            let (beta_fast, beta_slow) = (32.0f64, 1.0f64);
            let base = theta as f64;
            // The pair index whose wavelength makes `n_rot` turns over the
            // original context.
            let corr = |n_rot: f64| {
                dims as f64 * libm::log(original_context as f64 / (n_rot * 2.0 * PI))
                    / (2.0 * libm::log(base))
            };
            let low = corr(beta_fast).floor().max(0.0);
            let high = corr(beta_slow).ceil().min(dims as f64 - 1.0);
            let span = if high == low { 0.001 } else { high - low };
            for (i, f) in inv_freq.iter_mut().enumerate() {
                let ramp = ((i as f64 - low) / span).clamp(0.0, 1.0);
                let extrapolation = 1.0 - ramp;
                let interpolated = *f / factor as f64;
                *f = interpolated * (1.0 - extrapolation) + *f * extrapolation;
            }
            mscale = (0.1 * libm::log(factor as f64) + 1.0) as f32;
        }
    }
    RopeFreqs { inv_freq, mscale }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_divides_every_frequency() {
        let a = freqs(8, 10000.0, RopeScaling::None, None);
        let b = freqs(8, 10000.0, RopeScaling::Linear { factor: 2.0 }, None);
        for (x, y) in a.inv_freq.iter().zip(&b.inv_freq) {
            assert_eq!(x / 2.0, *y);
        }
        assert_eq!(a.inv_freq[0], 1.0);
        assert_eq!(a.inv_freq[1], 0.1);
    }

    #[test]
    fn llama3_factors_of_llama_3_1() {
        // Llama 3.1 8B: head 128, θ 500000, factor 8, low 1, high 4, orig 8192.
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192,
        };
        let f = llama3_freq_factors(128, 500000.0, s);
        assert_eq!(f.len(), 64);
        // Wavelength 2π < 2048: unchanged; the last pairs (λ > 8192): ÷ 8.
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        // In between, monotone from 1 to 8.
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0));
        let r = freqs(128, 500000.0, s, Some(&f));
        let plain = freqs(128, 500000.0, RopeScaling::None, None);
        assert_eq!(r.inv_freq[63], plain.inv_freq[63] / 8.0);
        assert_eq!(r.mscale, 1.0);
    }

    #[test]
    fn yarn_keeps_high_frequencies_and_interpolates_low_ones() {
        let s = RopeScaling::Yarn {
            factor: 4.0,
            original_context: 4096,
        };
        let r = freqs(64, 10000.0, s, None);
        let plain = freqs(64, 10000.0, RopeScaling::None, None);
        assert_eq!(r.inv_freq[0], plain.inv_freq[0]);
        assert_eq!(r.inv_freq[31], plain.inv_freq[31] / 4.0);
        assert!((r.mscale - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
    }
}

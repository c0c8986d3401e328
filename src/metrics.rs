//! Logit comparison metrics used by `tern check`, `tern perplexity` and the
//! tests: relative RMS error per position, KL divergence, top-1 agreement.

/// Log-softmax of one row, in f64.
pub fn log_softmax(x: &[f32]) -> Vec<f64> {
    let mx = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = libm::log(x.iter().map(|&v| libm::exp(v as f64 - mx)).sum::<f64>()) + mx;
    x.iter().map(|&v| v as f64 - lse).collect()
}

/// KL(p_ref ‖ p_test) of one position's logits.
pub fn kl(reference: &[f32], test: &[f32]) -> f64 {
    let lr = log_softmax(reference);
    let lt = log_softmax(test);
    lr.iter()
        .zip(&lt)
        .map(|(&r, &t)| libm::exp(r) * (r - t))
        .sum::<f64>()
        .max(0.0)
}

/// ‖test − ref‖₂ / ‖ref‖₂ of one position.
pub fn rel_rms(reference: &[f32], test: &[f32]) -> f64 {
    let mut num = 0f64;
    let mut den = 0f64;
    for (&r, &t) in reference.iter().zip(test) {
        num += ((t - r) as f64).powi(2);
        den += (r as f64).powi(2);
    }
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (num / den).sqrt()
}

pub fn argmax(x: &[f32]) -> usize {
    let mut b = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[b] {
            b = i;
        }
    }
    b
}

/// Agreement of two `positions × vocab` logit matrices.
#[derive(Debug, Clone, Copy, Default)]
pub struct Agreement {
    pub positions: usize,
    pub max_rel_rms: f64,
    pub mean_rel_rms: f64,
    pub mean_kl: f64,
    pub max_kl: f64,
    pub top1: f64,
}

pub fn compare(reference: &[f32], test: &[f32], vocab: usize) -> Agreement {
    assert_eq!(reference.len(), test.len(), "logit matrices differ in size");
    let n = reference.len() / vocab;
    let mut a = Agreement {
        positions: n,
        ..Default::default()
    };
    if n == 0 {
        return a;
    }
    let mut same = 0;
    for p in 0..n {
        let r = &reference[p * vocab..(p + 1) * vocab];
        let t = &test[p * vocab..(p + 1) * vocab];
        let e = rel_rms(r, t);
        let k = kl(r, t);
        a.max_rel_rms = a.max_rel_rms.max(e);
        a.mean_rel_rms += e / n as f64;
        a.mean_kl += k / n as f64;
        a.max_kl = a.max_kl.max(k);
        if argmax(r) == argmax(t) {
            same += 1;
        }
    }
    a.top1 = same as f64 / n as f64;
    a
}

/// The thresholds of the runtime issue.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub max_rel_rms: f64,
    pub mean_kl: f64,
    pub min_top1: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_rel_rms: 0.06,
            mean_kl: 0.01,
            min_top1: 0.7,
        }
    }
}

impl Agreement {
    pub fn passes(&self, t: &Thresholds) -> bool {
        self.max_rel_rms <= t.max_rel_rms && self.mean_kl <= t.mean_kl && self.top1 >= t.min_top1
    }
}

/// Read a little-endian f32 file.
pub fn read_f32_file(path: &std::path::Path) -> anyhow::Result<Vec<f32>> {
    let b = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {}", path.display(), e))?;
    if b.len() % 4 != 0 {
        anyhow::bail!("{} is not a whole number of f32 values", path.display());
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basics() {
        let a = [1.0f32, 2.0, 3.0];
        assert_eq!(kl(&a, &a), 0.0);
        assert_eq!(rel_rms(&a, &a), 0.0);
        let b = [1.0f32, 2.0, 3.3];
        assert!(kl(&a, &b) > 0.0);
        assert!((rel_rms(&a, &b) - 0.3 / (14f64).sqrt()).abs() < 1e-6);
        let c = compare(&[1.0, 0.0, 0.0, 1.0], &[1.0, 0.0, 1.0, 0.0], 2);
        assert_eq!(c.top1, 0.5);
    }
}

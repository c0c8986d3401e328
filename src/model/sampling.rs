//! Token sampling, llama.cpp style: repetition, frequency and presence
//! penalties, top-k, top-p, min-p, temperature, then a draw from a seeded
//! RNG. `temp <= 0` is greedy.

use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct SamplingParams {
    pub temp: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    /// Subtracted from a logit once per occurrence of its token in the
    /// recent tokens (OpenAI's `frequency_penalty`; 0 = off).
    pub frequency_penalty: f32,
    /// Subtracted from a logit once if its token occurs in the recent tokens
    /// (OpenAI's `presence_penalty`; 0 = off).
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

/// A sampling parameter outside its range; `name` is the field's name in
/// [`SamplingParams`] (front ends map it to their own flag or field name).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{name} = {value} is out of range: {expected}")]
pub struct BadSamplingParam {
    pub name: &'static str,
    pub value: f64,
    pub expected: &'static str,
}

impl SamplingParams {
    /// Check every value's range: `temp` finite (≤ 0 is greedy), `top_p` and
    /// `min_p` in [0, 1], `repeat_penalty` finite and > 0 (1 = off),
    /// `frequency_penalty` and `presence_penalty` in [-2, 2] (OpenAI's range).
    pub fn validate(&self) -> Result<(), BadSamplingParam> {
        let checks: [(&'static str, f32, bool, &'static str); 6] = [
            (
                "temp",
                self.temp,
                self.temp.is_finite(),
                "a finite number (<= 0 is greedy)",
            ),
            (
                "top_p",
                self.top_p,
                (0.0..=1.0).contains(&self.top_p),
                "between 0 and 1",
            ),
            (
                "min_p",
                self.min_p,
                (0.0..=1.0).contains(&self.min_p),
                "between 0 and 1",
            ),
            (
                "repeat_penalty",
                self.repeat_penalty,
                self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0,
                "a positive number (1 = off)",
            ),
            (
                "frequency_penalty",
                self.frequency_penalty,
                (-2.0..=2.0).contains(&self.frequency_penalty),
                "between -2 and 2",
            ),
            (
                "presence_penalty",
                self.presence_penalty,
                (-2.0..=2.0).contains(&self.presence_penalty),
                "between -2 and 2",
            ),
        ];
        match checks.into_iter().find(|c| !c.2) {
            Some((name, value, _, expected)) => Err(BadSamplingParam {
                name,
                value: value as f64,
                expected,
            }),
            None => Ok(()),
        }
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temp: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, reproducible.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e3779b97f4a7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = Rng::new(params.seed);
        Sampler { params, rng }
    }

    pub fn reseed(&mut self, seed: u64) {
        self.params.seed = seed;
        self.rng = Rng::new(seed);
    }

    /// Pick the next token from `logits` given the tokens so far (`history`).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        let mut l = logits.to_vec();
        let repeat = p.repeat_penalty != 1.0 && p.repeat_penalty > 0.0;
        if repeat || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            // llama.cpp's penalties: repetition divides a positive logit
            // (multiplies a negative one) once; frequency and presence subtract.
            let start = history.len().saturating_sub(p.repeat_last_n);
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &t in &history[start..] {
                if (t as usize) < l.len() {
                    *counts.entry(t).or_default() += 1;
                }
            }
            for (&t, &c) in &counts {
                let v = &mut l[t as usize];
                if repeat {
                    *v = if *v > 0.0 {
                        *v / p.repeat_penalty
                    } else {
                        *v * p.repeat_penalty
                    };
                }
                *v -= c as f32 * p.frequency_penalty + p.presence_penalty;
            }
        }
        if p.temp <= 0.0 {
            return argmax(&l);
        }
        let mut cand: Vec<(u32, f32)> = l.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
        // Highest logit first, ties by id: a total order, so selecting the
        // top k before sorting gives the same list as sorting everything
        // (and saves sorting a whole vocabulary per token).
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, order);
            cand.truncate(p.top_k);
        }
        cand.sort_by(order);
        // softmax over the remaining candidates (before temperature, as llama.cpp's top-p/min-p do)
        let probs = |c: &[(u32, f32)], t: f32| -> Vec<f64> {
            let mx = c[0].1 as f64;
            let e: Vec<f64> = c
                .iter()
                .map(|&(_, v)| libm::exp((v as f64 - mx) / t as f64))
                .collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|x| x / s).collect()
        };
        if p.top_p < 1.0 {
            let pr = probs(&cand, 1.0);
            let mut cum = 0.0;
            let mut keep = cand.len();
            for (i, q) in pr.iter().enumerate() {
                cum += q;
                if cum >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let pr = probs(&cand, 1.0);
            let thr = pr[0] * p.min_p as f64;
            let keep = pr.iter().take_while(|&&q| q >= thr).count().max(1);
            cand.truncate(keep);
        }
        let pr = probs(&cand, p.temp);
        let r = self.rng.next_f64();
        let mut cum = 0.0;
        for (i, q) in pr.iter().enumerate() {
            cum += q;
            if r < cum {
                return cand[i].0;
            }
        }
        cand[cand.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_seeded() {
        let logits = vec![0.1, 2.0, 1.9, -1.0];
        let mut s = Sampler::new(SamplingParams {
            temp: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&logits, &[]), 1);
        // repetition penalty moves greedy off a repeated token
        let mut s = Sampler::new(SamplingParams {
            temp: 0.0,
            repeat_penalty: 1.5,
            ..Default::default()
        });
        assert_eq!(s.sample(&logits, &[1]), 2);
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temp: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed,
                ..Default::default()
            });
            (0..50).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // top-k 1 is greedy whatever the temperature
        let mut s = Sampler::new(SamplingParams {
            temp: 5.0,
            top_k: 1,
            ..Default::default()
        });
        assert!((0..20).all(|_| s.sample(&logits, &[]) == 1));
    }
}

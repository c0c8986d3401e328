//! Token sampling, llama.cpp style: repetition, frequency and presence
//! penalties, top-k, top-p, min-p, temperature, then a draw from a seeded
//! RNG. `temp <= 0` is greedy.
//!
//! [`SamplingParams::validate`] and [`SamplingParams::set`] are the one place
//! where sampling values from users (command-line flags, `/set` in the chat,
//! request fields) are checked.

use std::collections::HashMap;

/// Sampling settings, with llama.cpp's meanings and defaults (`--temp 0.8
/// --top-k 40 --top-p 0.95 --min-p 0.05 --repeat-penalty 1.0
/// --repeat-last-n 64`).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Temperature; `<= 0` is greedy (argmax).
    pub temp: f32,
    /// Keep the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set whose probability reaches
    /// `top_p`, in [0, 1]; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one, in [0, 1].
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recent tokens by
    /// this, > 0; 1 is off.
    pub repeat_penalty: f32,
    /// Subtracted from a logit once per occurrence of its token in the
    /// recent tokens (OpenAI's `frequency_penalty`; 0 = off).
    pub frequency_penalty: f32,
    /// Subtracted from a logit once if its token occurs in the recent tokens
    /// (OpenAI's `presence_penalty`; 0 = off).
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at (`usize::MAX`: all).
    pub repeat_last_n: usize,
    pub seed: u64,
}

/// The names [`SamplingParams::set`] knows (`-` may stand for `_`).
pub const SETTINGS: &[&str] = &[
    "temp",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "repeat_last_n",
    "seed",
];

/// A sampling value that was refused: which setting, the value as given,
/// and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} = {value}: {problem}")]
pub struct SamplingError {
    /// The setting's name as in [`SETTINGS`] (or the unknown name given).
    pub name: String,
    pub value: String,
    /// What is wrong, e.g. "must be between 0 and 1".
    pub problem: String,
}

impl SamplingParams {
    /// Check every value: `temp` finite (≤ 0 is greedy), `top_p` and `min_p`
    /// in [0, 1], `repeat_penalty` finite and > 0 (1 = off),
    /// `frequency_penalty` and `presence_penalty` in [-2, 2] (OpenAI's range).
    pub fn validate(&self) -> Result<(), SamplingError> {
        let bad = |name: &str, value: f32, problem: &str| SamplingError {
            name: name.to_string(),
            value: value.to_string(),
            problem: problem.to_string(),
        };
        if !self.temp.is_finite() {
            return Err(bad(
                "temp",
                self.temp,
                "must be a finite number (0 or less is greedy)",
            ));
        }
        for (name, v) in [("top_p", self.top_p), ("min_p", self.min_p)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(bad(name, v, "must be between 0 and 1"));
            }
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(bad(
                "repeat_penalty",
                self.repeat_penalty,
                "must be a positive number (1 is off)",
            ));
        }
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(bad(name, v, "must be between -2 and 2 (0 is off)"));
            }
        }
        Ok(())
    }

    /// `top_k` from a signed count: 0 or less keeps every token (llama.cpp's
    /// `--top-k`; -1 is also what OpenAI-style clients send for "off").
    pub fn top_k_of(k: i64) -> usize {
        usize::try_from(k.max(0)).unwrap_or(usize::MAX)
    }

    /// Set one value from text, as typed on a command line: `name` is one of
    /// [`SETTINGS`] (`top-k` or `top_k`); `top_k` 0 or less keeps every token,
    /// `repeat_last_n -1` looks at the whole history, `seed -1` draws a random
    /// seed. The value is validated; on error nothing changes.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), SamplingError> {
        let key = name.replace('-', "_");
        let err = |problem: &str| SamplingError {
            name: key.clone(),
            value: value.to_string(),
            problem: problem.to_string(),
        };
        let int = || -> Result<i64, SamplingError> {
            value
                .trim()
                .parse()
                .map_err(|_| err("is not a whole number"))
        };
        let float = || -> Result<f32, SamplingError> {
            value.trim().parse().map_err(|_| err("is not a number"))
        };
        let mut p = self.clone();
        match key.as_str() {
            "temp" => p.temp = float()?,
            "top_k" => p.top_k = SamplingParams::top_k_of(int()?),
            "top_p" => p.top_p = float()?,
            "min_p" => p.min_p = float()?,
            "repeat_penalty" => p.repeat_penalty = float()?,
            "frequency_penalty" => p.frequency_penalty = float()?,
            "presence_penalty" => p.presence_penalty = float()?,
            "repeat_last_n" => {
                p.repeat_last_n = match int()? {
                    -1 => usize::MAX,
                    n => usize::try_from(n)
                        .map_err(|_| err("must be 0 or more, or -1 for the whole history"))?,
                }
            }
            "seed" => {
                p.seed = match value.trim() {
                    "-1" => random_seed(),
                    v => v.parse().map_err(|_| {
                        err("must be a whole number from 0 to 2^64-1, or -1 (random)")
                    })?,
                }
            }
            _ => {
                return Err(SamplingError {
                    name: name.to_string(),
                    value: value.to_string(),
                    problem: format!("unknown setting (known: {})", SETTINGS.join(", ")),
                })
            }
        }
        // Report the value as typed, under the name used.
        p.validate().map_err(|e| err(&e.problem))?;
        *self = p;
        Ok(())
    }

    /// The value of a setting as `set` accepts it back (`-1` for an unlimited
    /// `repeat_last_n`); None for an unknown name.
    pub fn get(&self, name: &str) -> Option<String> {
        Some(match name.replace('-', "_").as_str() {
            "temp" => self.temp.to_string(),
            "top_k" => self.top_k.to_string(),
            "top_p" => self.top_p.to_string(),
            "min_p" => self.min_p.to_string(),
            "repeat_penalty" => self.repeat_penalty.to_string(),
            "frequency_penalty" => self.frequency_penalty.to_string(),
            "presence_penalty" => self.presence_penalty.to_string(),
            "repeat_last_n" if self.repeat_last_n == usize::MAX => "-1".to_string(),
            "repeat_last_n" => self.repeat_last_n.to_string(),
            "seed" => self.seed.to_string(),
            _ => return None,
        })
    }
}

/// A seed from the clock, for `seed -1` (llama.cpp's default: random).
pub fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Fold the 128-bit count into 64 bits (no narrowing `as`).
    let [a, b]: [u64; 2] = bytemuck::cast(nanos);
    Rng::new(a ^ b.rotate_left(32)).next_u64()
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
    fn validation_and_set() {
        let mut p = SamplingParams::default();
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(
            (p.repeat_penalty, p.repeat_last_n),
            (1.0, 64),
            "llama.cpp's defaults"
        );
        for (name, value, problem) in [
            ("temp", "nan", "must be a finite number"),
            ("temp", "inf", "must be a finite number"),
            ("top-p", "nan", "must be between 0 and 1"),
            ("top_p", "1.5", "must be between 0 and 1"),
            ("min_p", "2", "must be between 0 and 1"),
            ("min-p", "-0.1", "must be between 0 and 1"),
            ("repeat_penalty", "0", "must be a positive number"),
            ("repeat-penalty", "nan", "must be a positive number"),
            ("top_k", "1.5", "is not a whole number"),
            ("repeat_last_n", "-2", "must be 0 or more"),
            ("seed", "-2", "or -1 (random)"),
            ("seed", "18446744073709551616", "or -1 (random)"),
        ] {
            let before = p.clone();
            let e = p.set(name, value).unwrap_err();
            assert_eq!(e.name, name.replace('-', "_"));
            assert_eq!(e.value, value);
            assert!(e.problem.contains(problem), "{name} {value}: {e}");
            assert_eq!(p, before, "unchanged on error");
        }
        assert!(p
            .set("colour", "red")
            .unwrap_err()
            .problem
            .contains("unknown setting"));
        // llama.cpp's negative values.
        p.set("temp", "-1").unwrap();
        assert_eq!(p.temp, -1.0);
        p.set("top-k", "-1").unwrap();
        assert_eq!(p.top_k, 0);
        p.set("repeat_last_n", "-1").unwrap();
        assert_eq!(p.repeat_last_n, usize::MAX);
        assert_eq!(p.get("repeat_last_n").as_deref(), Some("-1"));
        p.set("seed", "18446744073709551615").unwrap();
        assert_eq!(p.seed, u64::MAX);
        // A struct filled in directly (a server request) gets the same check.
        let q = SamplingParams {
            min_p: f32::NAN,
            ..Default::default()
        };
        assert_eq!(q.validate().unwrap_err().name, "min_p");
    }

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

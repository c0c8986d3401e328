//! The generation loop shared by `run` and `chat`.

use super::sampling::Sampler;
use super::Context;
use anyhow::Result;
use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct GenStats {
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    pub gen_tokens: usize,
    pub gen_secs: f64,
    /// Why generation stopped.
    pub stop: StopReason,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StopReason {
    #[default]
    Length,
    EndOfGeneration,
    ContextFull,
    Interrupted,
}

impl GenStats {
    pub fn report(&self) -> String {
        let per = |n: usize, s: f64| {
            if n > 0 && s > 0.0 {
                (s * 1000.0 / n as f64, n as f64 / s)
            } else {
                (0.0, 0.0)
            }
        };
        let (pm, pt) = per(self.prompt_tokens, self.prompt_secs);
        let (gm, gt) = per(self.gen_tokens, self.gen_secs);
        format!(
            "prompt eval time = {:10.2} ms / {:5} tokens ({:8.2} ms per token, {:8.2} tokens per second)\n       eval time = {:10.2} ms / {:5} tokens ({:8.2} ms per token, {:8.2} tokens per second)",
            self.prompt_secs * 1000.0,
            self.prompt_tokens,
            pm,
            pt,
            self.gen_secs * 1000.0,
            self.gen_tokens,
            gm,
            gt
        )
    }
}

/// Feed `prompt` (tokens after those already cached), then sample up to
/// `n_predict` tokens. `history` holds every token of the sequence (for the
/// repetition penalty) and gets the new ones appended. `on_token` receives
/// each sampled token and returns false to stop (interrupt).
pub fn generate(
    ctx: &mut Context,
    sampler: &mut Sampler,
    prompt: &[u32],
    history: &mut Vec<u32>,
    n_predict: usize,
    ignore_eos: bool,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<GenStats> {
    let mut st = GenStats {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut logits = ctx.eval(prompt, false)?;
    history.extend_from_slice(prompt);
    st.prompt_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let tok = &ctx.model.tokenizer;
    for _ in 0..n_predict {
        let next = sampler.sample(&logits, history);
        if !ignore_eos && tok.is_eog(next) {
            st.stop = StopReason::EndOfGeneration;
            break;
        }
        history.push(next);
        st.gen_tokens += 1;
        if !on_token(next) {
            st.stop = StopReason::Interrupted;
            break;
        }
        if ctx.n_past() >= ctx.n_ctx() {
            st.stop = StopReason::ContextFull;
            break;
        }
        logits = ctx.eval(&[next], false)?;
    }
    st.gen_secs = t1.elapsed().as_secs_f64();
    Ok(st)
}

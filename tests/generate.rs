//! The generation loop (`tern::model::generate`): stepwise and callback runs
//! agree with a plain greedy loop over `Context::eval`, stop reasons, and a
//! context shared by two generations that resync after each other's steps.

use std::path::PathBuf;
use tern::model::generate::{Generation, StopReason};
use tern::model::sampling::{argmax, Sampler, SamplingParams};
use tern::model::{Context, Model};

fn model() -> Model {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tern-shakespeare-i2_s.gguf");
    Model::load(&p).unwrap()
}

fn greedy() -> Sampler {
    Sampler::new(SamplingParams {
        temp: 0.0,
        repeat_penalty: 1.0,
        ..Default::default()
    })
}

/// Greedy continuation by hand: one eval per token, no EOG handling.
fn reference(m: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut ctx = Context::new(m, prompt.len() + n, false);
    let mut logits = ctx.eval(prompt, false).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = argmax(&logits);
        out.push(t);
        logits = ctx.eval(&[t], false).unwrap();
    }
    out
}

#[test]
fn steps_and_run_match_a_plain_greedy_loop() {
    let m = model();
    let prompt = m.tokenizer.encode("ROMEO.", true).unwrap();
    let want = reference(&m, &prompt, 24);

    let mut ctx = Context::new(&m, 256, false);
    let mut g = Generation::new(prompt.clone(), 24, true).unwrap();
    let mut sampler = greedy();
    let mut got = Vec::new();
    while let Some(t) = g.next_token(&mut ctx, &mut sampler).unwrap() {
        got.push(t);
    }
    assert_eq!(got, want);
    assert_eq!(g.generated(), &want[..]);
    assert_eq!(g.stats().stop, StopReason::Length);
    assert_eq!(g.stats().prompt_tokens, prompt.len());
    assert_eq!(g.stats().gen_tokens, 24);
    // The last token was never evaluated: no forward pass is wasted.
    assert_eq!(g.evaluated().len(), prompt.len() + 23);
    assert_eq!(ctx.n_past(), g.evaluated().len());
    assert_eq!(g.next_token(&mut ctx, &mut sampler).unwrap(), None);

    let mut ctx = Context::new(&m, 256, false);
    let mut g = Generation::new(prompt.clone(), 24, true).unwrap();
    let mut seen = Vec::new();
    let st = g
        .run(&mut ctx, &mut greedy(), |t| {
            seen.push(t);
            seen.len() < 5
        })
        .unwrap();
    assert_eq!(seen, want[..5]);
    assert_eq!(st.stop, StopReason::Interrupted);
    assert_eq!(st.gen_tokens, 5);
}

#[test]
fn a_full_context_stops_and_an_oversized_prompt_is_an_error() {
    let m = model();
    let prompt = m.tokenizer.encode("ROMEO.", true).unwrap();
    let n_ctx = prompt.len() + 4;
    let mut ctx = Context::new(&m, n_ctx, false);
    let mut g = Generation::new(prompt.clone(), 100, true).unwrap();
    let st = g.run(&mut ctx, &mut greedy(), |_| true).unwrap();
    assert_eq!(st.stop, StopReason::ContextFull);
    // Every position of the context was used, plus the one token sampled
    // from the last position.
    assert_eq!(st.gen_tokens, n_ctx - prompt.len() + 1);
    assert_eq!(g.generated(), &reference(&m, &prompt, st.gen_tokens)[..]);

    let mut small = Context::new(&m, prompt.len() - 1, false);
    let mut g = Generation::new(prompt, 4, true).unwrap();
    let e = g.next_token(&mut small, &mut greedy()).unwrap_err();
    assert!(e.to_string().contains("the prompt has"), "{e}");
    assert!(Generation::new(vec![], 4, true).is_err());
}

#[test]
fn two_generations_share_one_context_by_resyncing() {
    let m = model();
    let a_prompt = m.tokenizer.encode("ROMEO. O gentle", true).unwrap();
    let b_prompt = m.tokenizer.encode("ROMEO. What news", true).unwrap();
    let (want_a, want_b) = (reference(&m, &a_prompt, 12), reference(&m, &b_prompt, 12));
    let mut ctx = Context::new(&m, 128, false);
    // What the cache holds, as a caller sharing the context tracks it.
    let mut cached: Vec<u32> = Vec::new();
    let mut a = Generation::new(a_prompt.clone(), 12, true).unwrap();
    let mut b = Generation::new(b_prompt.clone(), 12, true).unwrap();
    let (mut sa, mut sb) = (greedy(), greedy());
    let shared = tern::model::generate::common_prefix(&a_prompt, &b_prompt);
    assert!(shared >= 2);
    for step in 0..12 {
        for (g, s) in [(&mut a, &mut sa), (&mut b, &mut sb)] {
            let keep = g.sync(&cached);
            if step == 0 && !cached.is_empty() {
                // B starts from A's prompt in the cache: the common prefix stays.
                assert_eq!(keep, shared);
            }
            g.next_token(&mut ctx, s).unwrap().unwrap();
            cached = g.evaluated().to_vec();
        }
    }
    assert_eq!(a.generated(), &want_a[..]);
    assert_eq!(b.generated(), &want_b[..]);

    // A generation that finds its whole prompt cached re-evaluates only the last token.
    let mut c = Generation::new(a_prompt.clone(), 1, true).unwrap();
    assert_eq!(c.sync(&a_prompt), a_prompt.len() - 1);
    let mut ctx2 = Context::new(&m, 64, false);
    ctx2.eval(&a_prompt, false).unwrap();
    assert_eq!(
        c.next_token(&mut ctx2, &mut greedy()).unwrap(),
        Some(want_a[0])
    );
    assert_eq!(c.stats().prompt_tokens, 1);
    // A context that lost tokens the generation relies on is an error, not garbage.
    let mut d = Generation::new(a_prompt.clone(), 2, true).unwrap();
    d.next_token(&mut ctx2, &mut greedy()).unwrap();
    ctx2.truncate(1);
    assert!(d.next_token(&mut ctx2, &mut greedy()).is_err());
}

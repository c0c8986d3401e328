//! The batched forward pass over many sequences (`model::forward::decode`):
//! a sequence's logits are bit-identical whether it runs alone or in one
//! batch with seven others that are prefilling or decoding at other
//! positions, so greedy outputs are identical too.

mod common;

use common::{convert_to, hf_dir, root};
use tern::model::forward::{decode, Batch, KvCache};
use tern::model::sampling::argmax;
use tern::model::{Context, Model};

const PROMPTS: [&str; 8] = [
    "ROMEO.",
    "KING HENRY. Once more unto the breach, dear friends",
    "First Citizen:",
    "JULIET. O Romeo, Romeo!",
    "HAMLET. To be, or not to be",
    "Enter",
    "MACBETH. Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace",
    "A",
];
const STEPS: usize = 12;

/// Greedy continuation of one prompt alone: the logits of every sampled step.
fn alone(m: &Model, prompt: &[u32]) -> Vec<Vec<f32>> {
    let mut ctx = Context::new(m, 256, false);
    let mut l = ctx.eval(prompt, false).unwrap();
    let mut rows = vec![];
    for _ in 0..STEPS {
        let next = argmax(&l);
        rows.push(l);
        l = ctx.eval(&[next], false).unwrap();
    }
    rows
}

/// The same eight continuations in shared batches: sequence s joins at step
/// s (its whole prompt in the batch beside the others' decode tokens).
fn together(m: &Model, prompts: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
    let n = prompts.len();
    let mut caches: Vec<KvCache> = (0..n).map(|_| KvCache::new(&m.hp, 256, false)).collect();
    let mut rows: Vec<Vec<Vec<f32>>> = vec![vec![]; n];
    let mut next: Vec<Option<u32>> = vec![None; n];
    let nv = m.hp.n_vocab;
    for step in 0..n + STEPS {
        let mut b = Batch::default();
        for s in 0..n {
            let pos = caches[s].n_past();
            if s == step {
                for (k, &t) in prompts[s].iter().enumerate() {
                    b.add(t, pos + k, s, k + 1 == prompts[s].len());
                }
            } else if let Some(t) = next[s] {
                if rows[s].len() < STEPS {
                    b.add(t, pos, s, true);
                }
            }
        }
        if b.is_empty() {
            break;
        }
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        let logits = decode(m, &mut refs, &b).unwrap();
        let mut r = 0;
        for j in 0..b.len() {
            if b.logits[j] {
                let s = b.seq[j];
                let row = logits[r * nv..(r + 1) * nv].to_vec();
                next[s] = Some(argmax(&row));
                rows[s].push(row);
                r += 1;
            }
        }
    }
    rows
}

fn check(m: &Model) {
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| m.tokenizer.encode(p, m.tokenizer.add_bos()).unwrap())
        .collect();
    let batched = together(m, &prompts);
    for (s, p) in prompts.iter().enumerate() {
        let solo = alone(m, p);
        assert_eq!(batched[s].len(), STEPS);
        for (i, (a, b)) in solo.iter().zip(&batched[s]).enumerate() {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "sequence {s}, step {i}: logits differ alone and batched"
            );
        }
        let g1: Vec<u32> = solo.iter().map(|r| argmax(r)).collect();
        let g2: Vec<u32> = batched[s].iter().map(|r| argmax(r)).collect();
        assert_eq!(g1, g2);
    }
}

#[test]
fn batched_logits_equal_alone_trained_model() {
    check(&Model::load(&root().join("models/tern-shakespeare-i2_s.gguf")).unwrap());
}

#[test]
fn batched_logits_equal_alone_fixture() {
    // F32 embedding, GQA (8 heads / 2 KV heads), relu².
    check(&Model::load(&root().join("vendor/reference/gguf/b158-bf16.i2_s.gguf")).unwrap());
}

#[test]
fn bad_batches_are_errors() {
    let m = Model::load(&root().join("models/tern-shakespeare-i2_s.gguf")).unwrap();
    let mut c = [KvCache::new(&m.hp, 4, false), KvCache::new(&m.hp, 4, false)];
    let run = |c: &mut [KvCache; 2], b: &Batch| {
        let mut refs: Vec<&mut KvCache> = c.iter_mut().collect();
        decode(&m, &mut refs, b)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let mut b = Batch::default();
    assert!(run(&mut c, &b).contains("no tokens"));
    b.add(1, 1, 0, true);
    assert!(run(&mut c, &b).contains("does not continue"));
    b.clear();
    b.add(1, 0, 2, true);
    assert!(run(&mut c, &b).contains("no KV cache"));
    b.clear();
    b.add(m.hp.n_vocab as u32, 0, 0, true);
    assert!(run(&mut c, &b).contains("vocabulary"));
    b.clear();
    for p in 0..5 {
        b.add(1, p, 1, false);
    }
    assert!(run(&mut c, &b).contains("context is full"));
    // Nothing was written by the failed batches.
    assert_eq!((c[0].n_past(), c[1].n_past()), (0, 0));
}

#[test]
fn batched_logits_equal_alone_llama_graph() {
    // The Llama-architecture graph (Falcon3-1.58bit-style: `llama` with
    // bitnet quantization, no sub-norms, SiLU gate), converted from its
    // checkpoint fixture to I2_S with an F16 embedding.
    let dir = tempfile::tempdir().unwrap();
    let out = convert_to(
        &hf_dir("llama-b158-packed"),
        &dir.path().join("llama-b158-packed.i2_s.gguf"),
        tern::quant::GgmlType::I2S,
        tern::quant::GgmlType::F16,
    );
    let m = Model::load(&out).unwrap();
    assert_eq!(m.hp.arch, "llama");
    check(&m);
}

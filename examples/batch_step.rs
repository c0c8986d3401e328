//! Time of one batched decode step over N sequences (llama-batched-bench's
//! S_TG): each sequence gets one prompt token, then 30 steps decode one
//! token of every sequence in one `decode` call; prints the median and
//! fastest step and the aggregate tokens/s.
//!
//! `cargo run --release --example batch_step -- MODEL.gguf [N ...]` (default N: 1 2 4 8)
use std::time::Instant;
use tern::model::forward::{decode, Batch, KvCache};
use tern::model::Model;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        anyhow::bail!("usage: batch_step MODEL.gguf [N ...]");
    };
    let m = Model::load(std::path::Path::new(path))?;
    let mut ns: Vec<usize> = Vec::new();
    for a in &args[2..] {
        match a.parse() {
            Ok(n) if (1..=64).contains(&n) => ns.push(n),
            _ => anyhow::bail!("N must be 1 to 64, not {a:?}"),
        }
    }
    if ns.is_empty() {
        ns = vec![1, 2, 4, 8];
    }
    let steps = 30;
    for &n in &ns {
        let mut caches: Vec<KvCache> = (0..n).map(|_| KvCache::new(&m.hp, 256, false)).collect();
        // Prefill 16 tokens per sequence.
        for (s, c) in caches.iter_mut().enumerate() {
            let mut b = Batch::default();
            for p in 0..1 {
                b.add((100 + s * 7 + p) as u32, p, 0, p == 0);
            }
            decode(&m, &mut [c], &b)?;
        }
        let mut times = vec![];
        for step in 0..steps {
            let mut b = Batch::default();
            for s in 0..n {
                b.add((500 + s + step) as u32, 1 + step, s, true);
            }
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            let t = Instant::now();
            decode(&m, &mut refs, &b)?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let med = times[steps / 2];
        println!(
            "n={n}: step {:.1} ms (min {:.1}), {:.2} t/s aggregate",
            med * 1e3,
            times[0] * 1e3,
            n as f64 / med
        );
    }
    Ok(())
}

//! Whole decode steps of kernels (and stream plans) side by side, the
//! steadiest comparison this project found on a shared, noisy VM: one
//! model, one KV cache per kernel, and the kernels taking turns step by
//! step (token `p` runs on every kernel before token `p + 1`, the order
//! rotating), so a change in the host's memory bandwidth lands on all of
//! them alike. Prints each kernel's quartiles of step time in ms, its
//! median as % of the first kernel's, and the bound as % of its median
//! (weights per token over the median streaming rate measured between
//! the rounds, as `tern bench` reads its bound).
//!
//! `cargo run --release --example ab_steps -- MODEL.gguf THREADS KERNEL,KERNEL…`
//! where a KERNEL is a variant name (`avx2`, `avx512vnni`, …), with
//! `-wide` or `-narrow` for a stream plan (`avx512vnni-wide`); default
//! tokens 128 per round, 4 rounds (`AB_TOKENS`, `AB_ROUNDS`).
//!
//! On the Zen 5 VM (2026-12-03) the quartiles of a kernel against itself
//! agreed within 0.5% this way, where separate `tern bench` runs of one
//! binary swung by 10–20% on two threads.
use std::time::Instant;
use tern::kernels::{test_variants, Kernel};
use tern::model::forward::{decode, Batch, KvCache};
use tern::model::Model;

fn env_count(name: &str, default: usize, max: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => anyhow::bail!("{name} must be 1 to {max}, not {v:?}"),
        },
    }
}

/// The kernel `name` names: a variant, optionally `-wide` / `-narrow`.
fn find(name: &str) -> anyhow::Result<&'static Kernel> {
    let (variant, plan) = match name.rsplit_once('-') {
        Some((v, p)) if p == "wide" || p == "narrow" => (v, Some(p)),
        _ => (name, None),
    };
    test_variants()
        .into_iter()
        .filter(|k| k.variant() == variant)
        .find(|k| plan.is_none_or(|p| k.plan().name == p))
        .ok_or_else(|| anyhow::anyhow!("no kernel {name:?} on this CPU"))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, threads, names] = &args[..] else {
        anyhow::bail!("usage: ab_steps MODEL.gguf THREADS KERNEL,KERNEL…");
    };
    let threads: usize = match threads.parse() {
        Ok(n) if (1..=256).contains(&n) => n,
        _ => anyhow::bail!("THREADS must be 1 to 256, not {threads:?}"),
    };
    let kernels = names
        .split(',')
        .map(find)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tokens = env_count("AB_TOKENS", 128, 4096)?;
    let rounds = env_count("AB_ROUNDS", 4, 100)?;
    let mut m = Model::load(std::path::Path::new(path))?;
    let n_vocab = u32::try_from(m.hp.n_vocab)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); kernels.len()];
    // The streaming read rate before each round and after the last, on
    // the same kind of memory `tern bench` measures its bound on.
    let mem = tern::kernels::ops::bandwidth_buffer(1 << 30);
    let words: &[u64] = bytemuck::cast_slice(mem.bytes());
    let mut rates = Vec::new();
    pool.install(|| -> anyhow::Result<()> {
        for round in 0..rounds {
            rates.push(tern::kernels::ops::read_bandwidth(words));
            let mut caches: Vec<KvCache> = kernels
                .iter()
                .map(|_| KvCache::new(&m.hp, tokens, false))
                .collect();
            for p in 0..tokens {
                let mut batch = Batch::default();
                // Any tokens will do: the work per step does not depend on them.
                batch.add((100 + u32::try_from(p)?) % n_vocab, p, 0, true);
                for i in 0..kernels.len() {
                    let k = (i + p + round) % kernels.len();
                    m.kernel = kernels[k];
                    let t0 = Instant::now();
                    decode(&m, &mut [&mut caches[k]], &batch)?;
                    times[k].push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        rates.push(tern::kernels::ops::read_bandwidth(words));
        Ok(())
    })?;
    rates.sort_by(f64::total_cmp);
    let rate = rates[rates.len() / 2];
    // Weights only, as `tern bench`'s bound (the cache adds < 0.1% here).
    let bound_ms = m.bytes_per_token() as f64 / rate / 1e6;
    let mut base = None;
    println!(
        "{threads} thread(s), {rounds} rounds of {tokens} tokens, ms per step; streaming sum {:.1}–{:.1} GB/s between rounds (median {rate:.1}): bound {bound_ms:.3} ms",
        rates[0],
        rates[rates.len() - 1]
    );
    for (k, t) in kernels.iter().zip(&mut times) {
        t.sort_by(f64::total_cmp);
        let n = t.len();
        let med = t[n / 2];
        let b = *base.get_or_insert(med);
        println!(
            "{:>16} ({}): q1 {:.3} median {:.3} q3 {:.3}  ({:.1}% of the first's median; {:.0}% of the bound)",
            k.variant(),
            k.plan().name,
            t[n / 4],
            med,
            t[3 * n / 4],
            100.0 * med / b,
            100.0 * bound_ms / med
        );
    }
    Ok(())
}

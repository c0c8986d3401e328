//! Where one generated token's time goes: the matrix products of a decode
//! step timed part by part (per layer: Q·K·V, output, gate·up, down; then
//! the output head), each as GB/s of the weights it streams, beside the
//! machine's streaming read rate on the same kind of memory (a sum over
//! 1 GiB of huge pages, as `tern bench` measures it) and a whole `decode`
//! step for comparison. A part well below the streaming rate is where the
//! bound is lost.
//!
//! `cargo run --release --example tg_profile -- MODEL.gguf [THREADS ...]`
//! (default threads: 1 2; `TERN_STREAMS=wide|narrow` to compare the
//! stream plans, `kernels::StreamPlan`, run by run)
//!
//! One caution it was written to make visible (Intel Xeon VM, 2026-12-01):
//! AVX2's one-token ternary tile (L2 prefetch only) streamed at 15.6 GB/s
//! in one build and 11 GB/s in another with the same tile code (only
//! unrelated code moved), while the streaming sum stayed at 18–19 GB/s;
//! AVX-512 VNNI's tile, which also prefetches into L1, streams at the fast
//! rate in every build tried (see `kernels::avx512`). Compare builds only
//! side by side, and read a kernel change's effect here before trusting a
//! `tern bench` difference.
use std::time::Instant;
use tern::kernels::matmul::with_busy_pool;
use tern::kernels::weights::{matmul_many, Acts};
use tern::model::forward::{decode, Batch, KvCache};
use tern::model::Model;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        anyhow::bail!("usage: tg_profile MODEL.gguf [THREADS ...]");
    };
    let m = Model::load(std::path::Path::new(path))?;
    let mut threads: Vec<usize> = Vec::new();
    for a in &args[2..] {
        match a.parse() {
            Ok(n) if (1..=256).contains(&n) => threads.push(n),
            _ => anyhow::bail!("THREADS must be 1 to 256, not {a:?}"),
        }
    }
    if threads.is_empty() {
        threads = vec![1, 2];
    }
    let mem = tern::kernels::ops::bandwidth_buffer(1 << 30);
    let words: &[u64] = bytemuck::cast_slice(mem.bytes());

    let kern = m.kernel;
    let (d, ff) = (m.hp.n_embd, m.hp.n_ff);
    let wave = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect()
    };
    let (xd, xf) = (wave(d), wave(ff));
    let l0 = &m.layers[0];
    let mut out: Vec<Vec<f32>> = [&l0.wq, &l0.wk, &l0.wv, &l0.wgate, &l0.wup]
        .iter()
        .map(|w| vec![0f32; w.rows()])
        .collect();
    let mut o = vec![0f32; d];
    let mut logits = vec![0f32; m.hp.n_vocab];
    const PARTS: [&str; 4] = ["qkv", "output", "gate·up", "down"];
    let part_bytes = [
        l0.wq.bytes() + l0.wk.bytes() + l0.wv.bytes(),
        l0.wo.bytes(),
        l0.wgate.bytes() + l0.wup.bytes(),
        l0.wdown.bytes(),
    ];
    let nl = m.layers.len() as f64;
    println!(
        "{path}: {} layers, kernel {} ({} streams); per-token weights {:.3} GB",
        m.layers.len(),
        kern.variant(),
        kern.plan().name,
        m.bytes_per_token() as f64 / 1e9
    );
    for &nt in &threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(nt).build()?;
        pool.install(|| -> anyhow::Result<()> {
            let rate = tern::kernels::ops::read_bandwidth(words);
            // Three passes; the last is reported (the first warms up).
            let mut part = [0f64; 4];
            let mut head = 0f64;
            for _ in 0..3 {
                part = [0.0; 4];
                with_busy_pool(|| {
                    let (ad, af) = (Acts::new(&xd, d), Acts::new(&xf, ff));
                    for l in &m.layers {
                        let [q, k, v, g, u] = &mut out[..] else {
                            unreachable!()
                        };
                        let t = [
                            Instant::now(),
                            {
                                matmul_many(kern, &ad, &mut [(&*l.wq, q), (&*l.wk, k), (&*l.wv, v)]);
                                Instant::now()
                            },
                            {
                                matmul_many(kern, &ad, &mut [(&*l.wo, &mut o)]);
                                Instant::now()
                            },
                            {
                                matmul_many(kern, &ad, &mut [(&*l.wgate, g), (&*l.wup, u)]);
                                Instant::now()
                            },
                            {
                                matmul_many(kern, &af, &mut [(&*l.wdown, &mut o)]);
                                Instant::now()
                            },
                        ];
                        for (p, w) in part.iter_mut().zip(t.windows(2)) {
                            *p += (w[1] - w[0]).as_secs_f64();
                        }
                    }
                    let t0 = Instant::now();
                    let a = Acts::new(&xd, d);
                    matmul_many(kern, &a, &mut [(&**m.head(), &mut logits)]);
                    head = t0.elapsed().as_secs_f64();
                });
            }
            let mut steps = Vec::new();
            let mut cache = KvCache::new(&m.hp, 64, false);
            for p in 0..24 {
                let mut b = Batch::default();
                b.add((100 + p) as u32, p, 0, true);
                let t0 = Instant::now();
                decode(&m, &mut [&mut cache], &b)?;
                steps.push(t0.elapsed().as_secs_f64());
            }
            steps.sort_by(f64::total_cmp);
            println!("\n{nt} thread(s): streaming sum over 1 GiB of huge pages {rate:.2} GB/s");
            println!("| part | per layer µs | GB/s | % of the streaming sum |\n|---|---|---|---|");
            for ((name, &secs), &bytes) in PARTS.iter().zip(&part).zip(&part_bytes) {
                let gbs = bytes as f64 * nl / secs / 1e9;
                println!(
                    "| {name} | {:.0} | {gbs:.1} | {:.0}% |",
                    secs / nl * 1e6,
                    100.0 * gbs / rate
                );
            }
            let hb = m.head().bytes() as f64;
            println!(
                "| head ({}) | {:.0} (once) | {:.1} | {:.0}% |",
                m.head().ty().name(),
                head * 1e6,
                hb / head / 1e9,
                100.0 * hb / head / 1e9 / rate
            );
            let mats: f64 = part.iter().sum::<f64>() + head;
            let step = steps[steps.len() / 2];
            println!(
                "products {:.1} ms, decode step (median of 24) {:.1} ms: {:.1} ms outside the products; bound {:.1} ms",
                mats * 1e3,
                step * 1e3,
                (step - mats) * 1e3,
                m.bytes_per_token() as f64 / rate / 1e6
            );
            Ok(())
        })?;
    }
    Ok(())
}

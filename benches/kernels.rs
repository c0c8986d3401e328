//! Kernel benchmarks at the BitNet b1.58 2B-4T shapes: every kernel this CPU
//! runs, one thread (the driver over the kernel's tiles) and the threaded
//! matrix product, for one token (GEMV on the packed groups, generation),
//! four tokens (packed tiles) and a prompt batch (GEMM through unpacked
//! panels and the interleaved-rows register tile), plus the F16 and Q6_K
//! output heads (128256 × 2560) and activation quantization.
//!
//!     cargo bench --bench kernels                 # everything
//!     cargo bench --bench kernels -- avx2/gemv    # a filter
//!
//! Throughput is weight bytes per second for GEMV and the head (memory
//! bound), multiply-adds per second for GEMM.
//!
//! `peak/maddubs` (x86-64 with AVX2) is the ceiling the AVX2 GEMM is
//! measured against: six independent `vpmaddubsw` + `vpaddw` chains on
//! registers only, 32 int8 multiply-adds per pair, no loads — the
//! instruction pair every exact int8 × ternary kernel on AVX2 without
//! VNNI (tern's, bitnet.cpp's I2_S, ik_llama.cpp's IQ2_BN) spends per 32
//! weights. `gemm128` ÷ `peak` is the share of the multiplier in use.
//!
//! Each x86 kernel comes with two stream plans (`kernels::StreamPlan`:
//! how many distant streams its one-token products read at once); the
//! plan this CPU is not given is benched too for those products, as
//! `avx512vnni-wide/gemv` or `avx2-narrow/head-q6_k`. The ternary
//! matrices repeat, so they come from L3 there; how the plans compare
//! from memory: `examples/tg_profile` with `TERN_STREAMS`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use std::time::Duration;
use tern::kernels::matmul::quantize_batch;
use tern::kernels::weights::{self, ActQuant, Acts, Weight};
use tern::kernels::{all_variants, test_variants, Kernel, Packed, QuantHead};

/// (rows, cols): q/o, k/v, gate/up, down.
const SHAPES: [(usize, usize); 4] = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)];
/// Tokens in the prompt-batch benchmarks.
const BATCH: usize = 128;
const VOCAB: usize = 128256;
const EMBD: usize = 2560;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The same random ternary matrix as repacked codes and as a weight.
fn ternary(rng: &mut Rng, rows: usize, cols: usize) -> (Packed, Weight) {
    let w: Vec<u8> = (0..rows * cols / 4)
        .map(|_| (0..4).fold(0u8, |b, i| b | (((rng.next() % 3) as u8) << (2 * i))))
        .collect();
    (
        Packed::from_i2s(&w, rows, cols).expect("valid shape"),
        weights::ternary_i2s(&w, rows, cols, 0.5).expect("valid shape"),
    )
}

fn floats(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect()
}

/// A kernel's bench name: its variant, and for the plan this CPU is not
/// given (see [`kernels`]) the plan's name too (`avx512vnni-wide`).
fn bench_name(kern: &Kernel, alt: bool) -> String {
    if alt {
        format!("{}-{}", kern.variant(), kern.plan().name)
    } else {
        kern.variant().to_string()
    }
}

/// The kernels to bench, each with whether it is a variant with the
/// stream plan this CPU is not given (`test_variants` beyond
/// `all_variants`): only its one-token products differ, so only those
/// are benched for it.
fn kernels() -> Vec<(&'static Kernel, bool)> {
    let main = all_variants();
    let alt: Vec<_> = test_variants()
        .into_iter()
        .filter(|k| !main.iter().any(|m| std::ptr::eq(*m, *k)))
        .collect();
    // The scalar reference is far slower and only there for correctness.
    let scalar = std::env::var("TERN_BENCH_SCALAR").is_ok();
    main.into_iter()
        .filter(|k| scalar || k.name() != "scalar")
        .map(|k| (k, false))
        .chain(alt.into_iter().map(|k| (k, true)))
        .collect()
}

fn ternary_benches(c: &mut Criterion) {
    let mut rng = Rng(0x1234_5678);
    for &(rows, cols) in &SHAPES {
        let (w, weight) = ternary(&mut rng, rows, cols);
        let x = floats(&mut rng, BATCH * cols);
        let shape = format!("{}x{}", rows, cols);
        for (kern, alt) in kernels() {
            let name = bench_name(kern, alt);
            let tests: &[(&str, usize)] = if alt {
                &[("gemv", 1)]
            } else {
                &[("gemv", 1), ("gemm4", 4), ("gemm128", BATCH)]
            };
            for &(label, n) in tests {
                let qb = quantize_batch(kern, &x[..n * cols], cols);
                let mut g = c.benchmark_group(format!("{}/{}", name, label));
                if n == 1 {
                    // Memory bound: weight bytes per second.
                    g.throughput(Throughput::Bytes(w.len() as u64));
                } else {
                    // Compute bound: multiply-adds per second.
                    g.throughput(Throughput::Elements((rows * cols * n) as u64));
                }
                let mut out = vec![0i32; n * 4 * w.groups()];
                g.bench_function(BenchmarkId::new("1-thread", &shape), |b| {
                    b.iter(|| {
                        kern.i2s_gemm(&w, 0, w.groups(), &qb.q, &qb.sums, black_box(&mut out))
                    })
                });
                let mut outf = vec![0f32; n * rows];
                g.bench_function(BenchmarkId::new("pool", &shape), |b| {
                    b.iter(|| {
                        let xa = Acts::new(&x[..n * cols], cols);
                        weight.matmul(kern, &xa, black_box(&mut outf))
                    })
                });
                g.finish();
            }
        }
    }
}

fn head_benches(c: &mut Criterion) {
    let mut rng = Rng(99);
    let head32: Vec<f32> = floats(&mut rng, VOCAB * EMBD);
    let head: Vec<f16> = head32.iter().map(|&v| f16::from_f32(v)).collect();
    let mut q6 = Vec::new();
    tern::quant::q6_k::quantize(&head32, &mut q6);
    drop(head32);
    let f16_head = weights::float_f16(head.clone(), VOCAB, EMBD, ActQuant::Native);
    let q6_head = weights::quant_blocks(QuantHead::Q6K, q6, VOCAB, EMBD).expect("whole blocks");
    let x = floats(&mut rng, EMBD);
    let shape = format!("{}x{}", VOCAB, EMBD);
    for (kern, alt) in kernels() {
        let name = bench_name(kern, alt);
        let mut g = c.benchmark_group(format!("{}/head-f16", name));
        g.throughput(Throughput::Bytes((head.len() * 2) as u64));
        let mut out = vec![0f32; VOCAB];
        g.bench_function(BenchmarkId::new("1-thread", &shape), |b| {
            b.iter(|| kern.f16_gemm(&head, EMBD, 0, VOCAB, &x, 1, black_box(&mut out)))
        });
        g.bench_function(BenchmarkId::new("pool", &shape), |b| {
            b.iter(|| f16_head.matmul(kern, &Acts::new(&x, EMBD), black_box(&mut out)))
        });
        g.finish();
        let mut g = c.benchmark_group(format!("{}/head-q6_k", name));
        g.throughput(Throughput::Bytes(q6_head.bytes() as u64));
        g.bench_function(BenchmarkId::new("pool", &shape), |b| {
            b.iter(|| q6_head.matmul(kern, &Acts::new(&x, EMBD), black_box(&mut out)))
        });
        g.finish();
    }
}

fn quantize_benches(c: &mut Criterion) {
    let mut rng = Rng(5);
    let x = floats(&mut rng, 6912);
    let mut q = vec![0i8; x.len()];
    let mut g = c.benchmark_group("quantize");
    g.throughput(Throughput::Elements(x.len() as u64));
    for kern in all_variants() {
        g.bench_function(BenchmarkId::new(kern.variant(), x.len()), |b| {
            b.iter(|| kern.quantize_act(black_box(&x), &mut q))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

#[cfg(target_arch = "x86_64")]
fn peak_benches(c: &mut Criterion) {
    use std::arch::x86_64::*;
    /// `iters` rounds of six independent `vpmaddubsw` + `vpaddw` pairs.
    #[target_feature(enable = "avx2")]
    unsafe fn maddubs_chains(iters: u64) -> i16 {
        let mut acc = [_mm256_setzero_si256(); 6];
        let mut a: [__m256i; 6] = std::array::from_fn(|i| _mm256_set1_epi8(i as i8 + 1));
        let mut b = _mm256_set1_epi8(3);
        for _ in 0..iters {
            // SAFETY: an empty asm block that only claims to change the
            // registers, so the products cannot be hoisted out of the loop;
            // it touches no memory and no stack.
            unsafe {
                std::arch::asm!(
                    "/* {0} {1} {2} {3} {4} {5} {6} */",
                    inout(ymm_reg) a[0], inout(ymm_reg) a[1], inout(ymm_reg) a[2],
                    inout(ymm_reg) a[3], inout(ymm_reg) a[4], inout(ymm_reg) a[5],
                    inout(ymm_reg) b, options(pure, nomem, nostack)
                )
            };
            for j in 0..6 {
                acc[j] = _mm256_add_epi16(acc[j], _mm256_maddubs_epi16(a[j], b));
            }
        }
        let mut r = acc[0];
        for v in &acc[1..] {
            r = _mm256_xor_si256(r, *v);
        }
        _mm256_extract_epi16::<0>(r) as i16
    }
    if !std::arch::is_x86_feature_detected!("avx2") {
        return;
    }
    const ITERS: u64 = 1 << 20;
    let mut g = c.benchmark_group("peak");
    g.throughput(Throughput::Elements(ITERS * 6 * 32));
    g.bench_function("maddubs", |b| {
        // SAFETY: AVX2 was detected above.
        b.iter(|| unsafe { maddubs_chains(black_box(ITERS)) })
    });
    g.finish();
}

#[cfg(not(target_arch = "x86_64"))]
fn peak_benches(_: &mut Criterion) {}

criterion_group! {
    name = benches;
    config = config();
    targets = ternary_benches, head_benches, quantize_benches, peak_benches
}
criterion_main!(benches);

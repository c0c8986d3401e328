//! Property tests: every kernel variant this CPU can run returns exactly the
//! scalar reference's integers (ternary products, activation quantization)
//! over random shapes and data, edge sizes included; float kernels agree
//! with the reference closely and do not depend on tiling or thread count.
//! The same file runs under qemu-aarch64 for NEON (see .ci/neon.sh, which
//! skips the `cli_` tests: they start the binary, which would need qemu too).

use half::f16;
use tern::kernels::weights::{self, ActQuant, Acts, Weight};
use tern::kernels::{
    all_variants, layout, scalar, test_variants, BlockActs, Kernel, Packed, QuantHead, RowLayout,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn i8(&mut self) -> i8 {
        self.next() as u8 as i8
    }
    fn f32(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Canonical I2_S bytes for `rows × cols`: valid codes (0..2) or, with
/// `raw`, any byte (code 3 included: kernels must still match the reference).
fn weights(rng: &mut Rng, rows: usize, cols: usize, raw: bool) -> Vec<u8> {
    (0..rows * cols / 4)
        .map(|_| {
            if raw {
                rng.next() as u8
            } else {
                (0..4).fold(0u8, |b, i| b | ((rng.below(3) as u8) << (2 * i)))
            }
        })
        .collect()
}

fn activations(rng: &mut Rng, n: usize, k: usize, style: usize) -> Vec<i8> {
    (0..n * k)
        .map(|_| match style {
            0 => rng.i8(),
            1 => -128,
            2 => 127,
            _ => [-128i8, 127, 0, -1, 1][rng.below(5)],
        })
        .collect()
}

fn sums(x: &[i8], k: usize) -> Vec<i32> {
    x.chunks(k)
        .map(|r| r.iter().map(|&v| v as i32).sum())
        .collect()
}

/// One kernel over one shape, every group sub-range style, against the
/// canonical-row reference.
fn check_i2s(kern: &Kernel, w: &[u8], rows: usize, cols: usize, x: &[i8], n: usize) {
    let p = Packed::from_i2s(w, rows, cols).unwrap();
    let s = sums(x, cols);
    let rb = cols / 4;
    let want = |m: usize, t: usize| {
        if m < rows {
            scalar::dot_i2s(&w[m * rb..(m + 1) * rb], &x[t * cols..(t + 1) * cols], s[t])
        } else {
            0
        }
    };
    let groups = p.groups();
    let mut ranges = vec![(0, groups)];
    if groups > 1 {
        ranges.push((1, groups));
        ranges.push((0, groups - 1));
        ranges.push((groups / 2, groups / 2 + 1));
    }
    for (g0, g1) in ranges {
        let ld = 4 * (g1 - g0);
        let mut out = vec![i32::MIN; n * ld];
        kern.i2s_gemm(&p, g0, g1, x, &s, &mut out);
        for t in 0..n {
            for r in 0..ld {
                let m = 4 * g0 + r;
                assert_eq!(
                    out[t * ld + r],
                    want(m, t),
                    "{} ({}): rows {} cols {} n {} groups {}..{}: row {} token {}",
                    kern.variant(),
                    kern.plan().name,
                    rows,
                    cols,
                    n,
                    g0,
                    g1,
                    m,
                    t
                );
            }
        }
    }
}

#[test]
fn i2s_kernels_match_scalar_on_random_shapes() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Every variant with each stream plan it comes with.
    let kernels = test_variants();
    // `.ci/neon.sh` reads the first line for the variants it meant to test.
    eprintln!(
        "kernels: {:?}",
        kernels.iter().map(|k| k.variant()).collect::<Vec<_>>()
    );
    eprintln!(
        "stream plans: {:?}",
        kernels.iter().map(|k| k.plan().name).collect::<Vec<_>>()
    );
    // Edge sizes: 1 block, chunk boundaries (8/16 blocks ± 1), rows not a
    // multiple of 4, token counts around every tile width, group counts
    // below, at and past the one-token streams (8 groups at once: 16 and
    // 17 rows are fewer groups; 32, 33, 67 and 135 rows leave 0, 1, 1 and
    // 2 groups over after one, one, two and four groups a stream; 4 at
    // once: 8, 9, 17 and 34 groups leave 0, 1, 1 and 2 over).
    let cols_set = [128, 256, 384, 1024, 1152, 2048, 2176];
    let rows_set = [1, 2, 3, 4, 5, 7, 8, 13, 16, 17, 32, 33, 67, 135];
    let n_set = [1, 2, 3, 4, 5, 6, 7, 9, 13];
    for case in 0..150 {
        let cols = cols_set[rng.below(cols_set.len())];
        let rows = rows_set[rng.below(rows_set.len())];
        let n = n_set[rng.below(n_set.len())];
        let raw = case % 3 == 0;
        let w = weights(&mut rng, rows, cols, raw);
        let x = activations(&mut rng, n, cols, case % 4);
        for k in &kernels {
            check_i2s(k, &w, rows, cols, &x, n);
        }
    }
    // One token over every streams edge above, whatever the draws:
    // `check_i2s` also takes ranges starting and ending one group in.
    for (i, rows) in [32, 33, 67, 135].into_iter().enumerate() {
        let cols = cols_set[i % cols_set.len()];
        let w = weights(&mut rng, rows, cols, i % 2 == 0);
        let x = activations(&mut rng, 1, cols, i % 4);
        for k in &kernels {
            check_i2s(k, &w, rows, cols, &x, 1);
        }
    }
}

#[test]
fn i2s_extremes_do_not_overflow() {
    // Every code 2 (or 3) against every activation -128: the largest
    // magnitudes the 16-bit stages can see, over a long row; on the
    // one-token tiles (1: nine groups, eight of them streamed together, or
    // two runs of four), the packed tiles (5 tokens) and the prompt tiles
    // (13).
    for (byte, xv) in [
        (0xAAu8, -128i8),
        (0xAA, 127),
        (0xFF, -128),
        (0xFF, 127),
        (0x00, -128),
    ] {
        for n in [1, 5, 13] {
            let (rows, cols) = (33, 4096);
            let w = vec![byte; rows * cols / 4];
            let x = vec![xv; n * cols];
            for k in test_variants() {
                check_i2s(k, &w, rows, cols, &x, n);
            }
        }
    }
}

#[test]
fn packed_rows_longer_than_the_limit_are_refused() {
    // The tiles' 32-bit sums are exact up to MAX_COLS columns (the VNNI
    // one-group one-token tile's lanes hold 64× the codes' sums); a longer row is an
    // error before any buffer is sized from it.
    let cols = tern::kernels::ternary::MAX_COLS + 128;
    let Err(err) = Packed::from_i2s(&[], 1, cols) else {
        panic!("a {cols}-column matrix was accepted");
    };
    let err = err.to_string();
    assert!(err.contains("at most"), "{err}");
    let ok = tern::kernels::ternary::MAX_COLS;
    assert!(Packed::from_i2s(&vec![0u8; ok / 4], 1, ok).is_ok());
}

#[test]
fn i2s_prompt_tiles_match_scalar_across_tile_and_panel_edges() {
    // The interleaved-rows prompt path: token counts around every ISA's
    // tile width (4 or 6) from PANEL_MIN_TOKENS up, rows around the panel
    // (16 rows) and tile heights (2 or 4) with padding, row lengths around
    // the 16-bit runs (16 or 32 steps of 32 or 64 values).
    let mut rng = Rng(0x5eed_7111);
    let p = tern::kernels::ternary::PANEL_MIN_TOKENS;
    let n_set = [
        p,
        p + 1,
        p + 3,
        p + 4,
        p + 5,
        p + 9,
        p + 10,
        p + 16,
        p + 17,
        p + 23,
    ];
    let rows_set = [1, 3, 4, 6, 15, 16, 17, 33, 64, 70];
    let cols_set = [128, 512, 640, 1024, 1152, 2048, 2176, 4224];
    let kernels = test_variants();
    for case in 0..60 {
        let n = n_set[case % n_set.len()];
        let rows = rows_set[rng.below(rows_set.len())];
        let cols = cols_set[rng.below(cols_set.len())];
        let w = weights(&mut rng, rows, cols, case % 4 == 0);
        let x = activations(&mut rng, n, cols, case % 4);
        for k in &kernels {
            check_i2s(k, &w, rows, cols, &x, n);
        }
    }
}

#[test]
fn i2s_panel_unpack_and_token_tiles_match_their_layouts() {
    // Each kernel's unpack writes the layout its prompt tile reads (the
    // reference unpack's bytes), and tile_tokens puts token t, value v of
    // each tile where the tile reads it.
    use tern::kernels::ternary::{tile_tokens, unpack_generic};
    let mut rng = Rng(99);
    let (rows, cols) = (16, 1152);
    let w = weights(&mut rng, rows, cols, true);
    let p = Packed::from_i2s(&w, rows, cols).unwrap();
    for k in all_variants() {
        let shape = k.i2s_shape();
        let mut got = vec![0xEEu8; rows * cols];
        let mut want = vec![0xDDu8; rows * cols];
        // SAFETY: both buffers hold groups · 4 · cols bytes; the packed data
        // holds 4 groups; the shape is the kernel's own.
        unsafe {
            k.i2s_unpack(
                p.group_bytes(0, 4).as_ptr(),
                p.blocks(),
                4,
                got.as_mut_ptr(),
            );
            unpack_generic(
                p.group_bytes(0, 4).as_ptr(),
                p.blocks(),
                4,
                shape,
                want.as_mut_ptr(),
            );
        }
        assert_eq!(got, want, "{} unpack", k.variant());
        let (rr, l) = (shape.rows, shape.lane);
        let steps = cols / l;
        for m in 0..rows {
            let row = &w[m * cols / 4..(m + 1) * cols / 4];
            for v in 0..cols {
                // Canonical I2_S: value v at byte 32·(v / 128) + v % 32,
                // bits 6 − 2·((v % 128) / 32).
                let code = (row[32 * (v / 128) + v % 32] >> (6 - 2 * ((v % 128) / 32))) & 3;
                let at = ((m / rr) * steps + v / l) * rr * l + (m % rr) * l + v % l;
                assert_eq!(want[at], code, "{} row {} value {}", k.variant(), m, v);
            }
        }
        let n = 2 * shape.tokens + 1;
        let x = activations(&mut rng, n, cols, 0);
        let tiled = tile_tokens(shape, &x, cols);
        for t in 0..n {
            let (t0, tt) = (
                t - t % shape.tokens,
                shape.tokens.min(n - t + t % shape.tokens),
            );
            for v in 0..cols {
                let at = t0 * cols + ((v / l) * tt + t % shape.tokens) * l + v % l;
                assert_eq!(
                    tiled[at],
                    x[t * cols + v],
                    "{} token {} value {}",
                    k.variant(),
                    t,
                    v
                );
            }
        }
    }
}

#[test]
fn quantize_matches_scalar_bit_for_bit() {
    let mut rng = Rng(42);
    for case in 0..200 {
        let len = [1, 7, 8, 31, 32, 33, 100, 256, 257, 2560][case % 10];
        let scale = [1e-8f32, 1e-3, 1.0, 37.5, 1e6][rng.below(5)];
        let mut x: Vec<f32> = (0..len).map(|_| rng.f32() * scale).collect();
        match case % 7 {
            // exact .5 ties after scaling: max 127 → a = 1
            1 => {
                for (i, v) in x.iter_mut().enumerate() {
                    *v = (i % 255) as f32 - 127.0 + 0.5;
                }
                x[0] = 127.0;
            }
            2 => x.iter_mut().for_each(|v| *v = 0.0),
            3 => x[len / 2] = f32::NAN,
            4 => x[len - 1] = -f32::INFINITY,
            5 => x[0] = f32::MIN_POSITIVE / 4.0,
            _ => {}
        }
        let mut want = vec![0i8; len];
        let (wa, ws) = scalar::quantize_act(&x, &mut want);
        for k in all_variants() {
            let mut got = vec![0i8; len];
            let (a, s) = k.quantize_act(&x, &mut got);
            assert_eq!(
                a.to_bits(),
                wa.to_bits(),
                "{} case {} scale",
                k.variant(),
                case
            );
            assert_eq!(s, ws, "{} case {} sum", k.variant(), case);
            assert_eq!(got, want, "{} case {} values", k.variant(), case);
        }
    }
}

/// Every kernel with each stream plan it comes with, each in a pool of one
/// thread and in one of two (a plan may read a different number of
/// streams with several threads, `StreamPlan`).
fn plans_and_pools() -> Vec<(&'static Kernel, rayon::ThreadPool)> {
    test_variants()
        .into_iter()
        .flat_map(|k| {
            [1, 2].map(|t| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build();
                (k, pool.expect("thread pool"))
            })
        })
        .collect()
}

/// One token over many F16 / F32 rows: kernels with a distant-rows tile
/// (`Ops::f16_streams`, `Ops::f32_streams`) read rows from two or four runs
/// of the range at once and tile the rows left over; every row must come out
/// with the bits of the same row alone, at its own place, for any range
/// and remainder.
#[test]
fn one_token_float_rows_read_apart_equal_row_by_row() {
    let mut rng = Rng(11);
    for &(rows, d) in &[(4, 8), (7, 13), (9, 100), (16, 64), (37, 259), (64, 2560)] {
        let w32: Vec<f32> = (0..rows * d).map(|_| rng.f32()).collect();
        let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let x: Vec<f32> = (0..d).map(|_| rng.f32()).collect();
        for (k, pool) in plans_and_pools() {
            pool.install(|| {
                for f16_rows in [true, false] {
                    let gemm = |v0: usize, v1: usize, out: &mut [f32]| {
                        if f16_rows {
                            k.f16_gemm(&w16, d, v0, v1, &x, 1, out)
                        } else {
                            k.f32_gemm(&w32, d, v0, v1, &x, 1, out)
                        }
                    };
                    let alone: Vec<f32> = (0..rows)
                        .map(|v| {
                            let mut one = [0f32];
                            gemm(v, v + 1, &mut one);
                            let want = if f16_rows {
                                scalar::dot_f16(&w16[v * d..(v + 1) * d], &x)
                            } else {
                                scalar::dot_f32(&w32[v * d..(v + 1) * d], &x)
                            };
                            assert!(close(one[0], want, d as f32), "{} row {v}", k.variant());
                            one[0]
                        })
                        .collect();
                    for (v0, v1) in [(0, rows), (1, rows), (0, rows - 1), (rows / 3, rows)] {
                        let mut out = vec![f32::NAN; v1 - v0];
                        gemm(v0, v1, &mut out);
                        for (v, got) in (v0..v1).zip(&out) {
                            assert_eq!(
                                got.to_bits(),
                                alone[v].to_bits(),
                                "{} f16 {f16_rows} rows {v0}..{v1}, row {v} (d {d})",
                                k.variant()
                            );
                        }
                    }
                }
            });
        }
    }
}

fn close(a: f32, b: f32, mag: f32) -> bool {
    (a - b).abs() <= 1e-4 * mag.max(1.0)
}

#[test]
fn float_kernels_agree_and_do_not_depend_on_tiling() {
    let mut rng = Rng(7);
    for &(rows, d, n) in &[
        (1, 8, 1),
        (5, 13, 3),
        (9, 64, 5),
        (17, 100, 2),
        (33, 256, 7),
        (6, 2560, 4),
    ] {
        let w32: Vec<f32> = (0..rows * d).map(|_| rng.f32()).collect();
        let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let xs: Vec<f32> = (0..n * d).map(|_| rng.f32()).collect();
        let mag = d as f32;
        for k in all_variants() {
            let mut full16 = vec![0f32; n * rows];
            let mut full32 = vec![0f32; n * rows];
            k.f16_gemm(&w16, d, 0, rows, &xs, n, &mut full16);
            k.f32_gemm(&w32, d, 0, rows, &xs, n, &mut full32);
            for t in 0..n {
                let x = &xs[t * d..(t + 1) * d];
                for v in 0..rows {
                    let r16 = scalar::dot_f16(&w16[v * d..(v + 1) * d], x);
                    let r32 = scalar::dot_f32(&w32[v * d..(v + 1) * d], x);
                    let (g16, g32) = (full16[t * rows + v], full32[t * rows + v]);
                    assert!(
                        close(g16, r16, mag),
                        "{} f16 {} vs {}",
                        k.variant(),
                        g16,
                        r16
                    );
                    assert!(
                        close(g32, r32, mag),
                        "{} f32 {} vs {}",
                        k.variant(),
                        g32,
                        r32
                    );
                    assert!(close(k.dot_f16(&w16[v * d..(v + 1) * d], x), r16, mag));
                    assert!(close(k.dot_f32(&w32[v * d..(v + 1) * d], x), r32, mag));
                    // One row, one token: the same bits as inside the big tile.
                    let mut one = [0f32];
                    k.f16_gemm(&w16, d, v, v + 1, x, 1, &mut one);
                    assert_eq!(
                        one[0].to_bits(),
                        g16.to_bits(),
                        "{} f16 tiling",
                        k.variant()
                    );
                    k.f32_gemm(&w32, d, v, v + 1, x, 1, &mut one);
                    assert_eq!(
                        one[0].to_bits(),
                        g32.to_bits(),
                        "{} f32 tiling",
                        k.variant()
                    );
                }
            }
            let mut y = xs[..d].to_vec();
            let mut want = y.clone();
            k.axpy_f16(0.75, &w16[..d], &mut y);
            scalar::axpy_f16(0.75, &w16[..d], &mut want);
            assert!(
                y.iter().zip(&want).all(|(a, b)| close(*a, *b, 1.0)),
                "{} axpy",
                k.variant()
            );
        }
    }
}

/// The grouped-query routines (`g` query heads over one KV head, each row
/// read once) give every head's scores and values bit for bit as the
/// per-head routines do, on every kernel, with K/V in f16 and f32.
#[test]
fn grouped_attention_equals_head_by_head() {
    use tern::kernels::ops::Kv;
    let mut rng = Rng(12);
    // (head dim, stride, positions, heads): tails past 16 and 8 lanes,
    // groups split 4 + 1 and 4 + 2, no position at all, contiguous rows
    // (the head-major cache) over several of AVX2's 32-position blocks.
    for &(hd, stride, npos, g) in &[
        (128, 640, 1, 4),
        (128, 640, 37, 4),
        (128, 128, 100, 4),
        (64, 64, 65, 5),
        (128, 640, 23, 5),
        (64, 200, 9, 2),
        (100, 300, 5, 3),
        (12, 40, 3, 6),
        (72, 72, 4, 1),
        (32, 64, 0, 2),
    ] {
        let kv32: Vec<f32> = (0..npos.max(1) * stride).map(|_| rng.f32()).collect();
        let kv16: Vec<f16> = kv32.iter().map(|&v| f16::from_f32(v)).collect();
        let qs: Vec<f32> = (0..g * hd).map(|_| rng.f32()).collect();
        let ps: Vec<f32> = (0..g * npos).map(|_| rng.f32().abs()).collect();
        let off = stride - hd;
        for k in all_variants() {
            for kv in [Kv::F16(&kv16), Kv::F32(&kv32)] {
                let mut s = vec![f32::NAN; g * npos];
                k.attn_scores_group(kv, stride, off, &qs, hd, 0.125, &mut s);
                let mut o = vec![f32::NAN; g * hd];
                k.attn_values_group(kv, stride, off, &ps, g, &mut o);
                for h in 0..g {
                    let mut want_s = vec![0f32; npos];
                    k.attn_scores(kv, stride, off, &qs[h * hd..][..hd], 0.125, &mut want_s);
                    let mut want_o = vec![0f32; hd];
                    k.attn_values(kv, stride, off, &ps[h * npos..][..npos], &mut want_o);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&s[h * npos..][..npos]),
                        bits(&want_s),
                        "{} scores, head {h} of {g}, d {hd}, {npos} positions",
                        k.variant()
                    );
                    assert_eq!(
                        bits(&o[h * hd..][..hd]),
                        bits(&want_o),
                        "{} values, head {h} of {g}, d {hd}, {npos} positions",
                        k.variant()
                    );
                }
            }
        }
    }
}

/// Rows whose offsets overflow are refused, not wrapped into the cache.
#[test]
#[should_panic(expected = "exceed a cache")]
fn attention_rows_that_overflow_are_refused() {
    use tern::kernels::ops::Kv;
    let kv = vec![f16::ZERO; 256];
    let qs = vec![0f32; 64];
    let mut s = vec![0f32; 3];
    // 2 · stride wraps to 2: inside 256 values if the check wrapped too.
    let stride = usize::MAX / 2 + 2;
    tern::kernels::select(None).unwrap().attn_scores_group(
        Kv::F16(&kv),
        stride,
        0,
        &qs,
        64,
        1.0,
        &mut s,
    );
}

#[test]
fn attention_kernels_equal_their_dot_and_axpy() {
    use tern::kernels::ops::Kv;
    let mut rng = Rng(11);
    for &(hd, stride, npos) in &[
        (128, 640, 1),
        (128, 640, 37),
        (64, 200, 9),
        (100, 300, 5),
        (12, 40, 3),
    ] {
        let kv32: Vec<f32> = (0..npos * stride).map(|_| rng.f32()).collect();
        let kv16: Vec<f16> = kv32.iter().map(|&v| f16::from_f32(v)).collect();
        let q: Vec<f32> = (0..hd).map(|_| rng.f32()).collect();
        let p: Vec<f32> = (0..npos).map(|_| rng.f32().abs()).collect();
        let off = stride - hd;
        for k in all_variants() {
            for kv in [Kv::F16(&kv16), Kv::F32(&kv32)] {
                let mut s = vec![0f32; npos];
                k.attn_scores(kv, stride, off, &q, 0.125, &mut s);
                let mut o = vec![0f32; hd];
                k.attn_values(kv, stride, off, &p, &mut o);
                let mut want_o = vec![0f32; hd];
                for t in 0..npos {
                    let at = t * stride + off;
                    let (d, w) = match kv {
                        Kv::F16(v) => {
                            k.axpy_f16(p[t], &v[at..at + hd], &mut want_o);
                            (
                                k.dot_f16(&v[at..at + hd], &q),
                                scalar::dot_f16(&v[at..at + hd], &q),
                            )
                        }
                        Kv::F32(v) => {
                            k.axpy_f32(p[t], &v[at..at + hd], &mut want_o);
                            (
                                k.dot_f32(&v[at..at + hd], &q),
                                scalar::dot_f32(&v[at..at + hd], &q),
                            )
                        }
                    };
                    assert_eq!(
                        s[t].to_bits(),
                        (d * 0.125).to_bits(),
                        "{} score",
                        k.variant()
                    );
                    assert!(
                        close(s[t], w * 0.125, hd as f32),
                        "{} score vs scalar",
                        k.variant()
                    );
                }
                assert_eq!(o, want_o, "{} values hd {}", k.variant(), hd);
            }
        }
    }
}

#[test]
fn matmul_is_independent_of_threads_and_batch() {
    let mut rng = Rng(3);
    let (rows, cols) = (70, 512);
    let w = weights(&mut rng, rows, cols, false);
    let proj = weights::ternary_i2s(&w, rows, cols, 0.37).unwrap();
    let vocab = 301;
    let head: Vec<f16> = (0..vocab * cols)
        .map(|_| f16::from_f32(rng.f32()))
        .collect();
    let head = weights::float_f16(head, vocab, cols, ActQuant::Native);
    let x: Vec<f32> = (0..9 * cols).map(|_| rng.f32() * 3.0).collect();
    let run = |threads: usize, n: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut res = Vec::new();
            for k in all_variants() {
                let xa = Acts::new(&x[..n * cols], cols);
                let mut out = vec![0f32; n * rows];
                proj.matmul(k, &xa, &mut out);
                let mut logits = vec![0f32; n * vocab];
                head.matmul(k, &xa, &mut logits);
                res.push((out, logits));
            }
            res
        })
    };
    let one = run(1, 9);
    assert_eq!(one, run(2, 9));
    assert_eq!(one, run(3, 9));
    // Row by row gives the same bits as the batch.
    for n in [1, 2, 5] {
        let part = run(2, n);
        for (a, b) in one.iter().zip(&part) {
            assert_eq!(&a.0[..n * rows], &b.0[..]);
            assert_eq!(&a.1[..n * vocab], &b.1[..]);
        }
    }
    // Every kernel's projection equals the scalar one exactly (the float
    // step after the integer dot is shared).
    for r in &one[1..] {
        assert_eq!(r.0, one[0].0);
    }
}

#[test]
fn forced_kernel_names() {
    assert!(tern::kernels::select(Some("scalar")).is_ok());
    let e = match tern::kernels::select(Some("sse9")) {
        Ok(_) => panic!("unknown kernel accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("unknown kernel"), "{}", e);
    // A variant by its own name, when this CPU has it; else refused. A
    // variant named as its family (`neon`, `avx2`) is the family's name,
    // which picks the family's best variant.
    for k in tern::kernels::all_variants() {
        let got = tern::kernels::select(Some(k.variant())).expect("variant by name");
        if k.variant() != k.name() {
            assert_eq!(got.variant(), k.variant());
        } else {
            assert_eq!(got.name(), k.name());
        }
    }
    for v in ["avx512bw", "avx512vnni", "neon+dotprod"] {
        let have = tern::kernels::all_variants()
            .iter()
            .any(|k| k.variant() == v);
        assert_eq!(tern::kernels::select(Some(v)).is_ok(), have, "{v}");
    }
    #[cfg(target_arch = "x86_64")]
    assert!(tern::kernels::select(Some("neon")).is_err());
    #[cfg(target_arch = "aarch64")]
    assert!(tern::kernels::select(Some("avx2")).is_err());
}

// ------------------------------------------------- quantized output head

/// Q8_K / Q8_0 activation quants: random, or the extremes ±127.
fn head_acts(rng: &mut Rng, len: usize, style: usize) -> Vec<i8> {
    (0..len)
        .map(|_| match style {
            0 => (rng.below(255) as i32 - 127) as i8,
            1 => 127,
            2 => -127,
            3 => [-127i8, 127, 0, -1, 1][rng.below(5)],
            // Not what the Q8_K quantizer writes (it stops at -127), but
            // the Q6_K kernels must stay exact for any byte: AVX-512's
            // packs four-value sums into 16 bits (|4 · 63 · -128| < 2^15).
            _ => -128,
        })
        .collect()
}

/// The Q8_K sums of 16 of quants `a` in the lane order of tern's Q6_K
/// layout: each block's sixteen sub-block sums (`q6_k::lane_sub_block`).
fn sums16(a: &[i8]) -> Vec<i16> {
    let mut s = vec![0i16; a.len() / 16];
    for (p, &v) in a.iter().enumerate() {
        let b = p / tern::quant::q6_k::QK_K;
        s[16 * b + tern::quant::q6_k::lane_sub_block(p % tern::quant::q6_k::QK_K)] += v as i16;
    }
    s
}

#[test]
fn quant_head_block_dots_match_scalar() {
    let mut rng = Rng(0x51_7e55);
    for case in 0..120 {
        let kind = if case % 2 == 0 {
            QuantHead::Q8_0
        } else {
            QuantHead::Q6K
        };
        let k = kind.block() * [1, 2, 3, 10][rng.below(4)];
        // Any bytes are a valid block of either type (Q8_0 quants -128
        // included, Q6_K scales -128 included; Q6_K in tern's load-time
        // layout, the activations in its lane order); the extremes stress
        // the 16-bit stages.
        let w: Vec<u8> = (0..kind.row_bytes(k))
            .map(|_| match case % 5 {
                1 => 0x80,
                2 => 0xFF,
                3 => 0x7F,
                _ => rng.next() as u8,
            })
            .collect();
        // Every activation style with every weight style (for Q8_0 not
        // -128: its AVX2 sign trick needs a negatable activation).
        let style = match kind {
            QuantHead::Q8_0 => case % 4,
            QuantHead::Q6K => (case / 5) % 5,
        };
        let a = head_acts(&mut rng, k, style);
        let bs = if kind == QuantHead::Q6K {
            sums16(&a)
        } else {
            Vec::new()
        };
        let nb = k / kind.block();
        let mut want = vec![0i32; nb];
        match kind {
            QuantHead::Q8_0 => scalar::q8_0_block_dots(&w, &a, &mut want),
            QuantHead::Q6K => scalar::q6_k_block_dots(&w, &a, &bs, &mut want),
        }
        for kern in all_variants() {
            let mut got = vec![i32::MIN; nb];
            match kind {
                QuantHead::Q8_0 => kern.q8_0_block_dots(&w, &a, &mut got),
                QuantHead::Q6K => kern.q6_k_block_dots(&w, &a, &bs, &mut got),
            }
            assert_eq!(
                got,
                want,
                "{} {:?} k {} case {}",
                kern.variant(),
                kind,
                k,
                case
            );
        }
    }
}

/// A `rows × k` head quantized from random floats (some rows zero, some
/// with outliers), as the converter would write it.
fn quant_head(rng: &mut Rng, kind: QuantHead, rows: usize, k: usize) -> Vec<u8> {
    let mut x: Vec<f32> = (0..rows * k).map(|_| rng.f32() * 0.05).collect();
    for r in 0..rows {
        match r % 5 {
            2 => x[r * k..(r + 1) * k].fill(0.0),
            3 => x[r * k + rng.below(k)] = 1.5,
            _ => {}
        }
    }
    let mut w = Vec::new();
    match kind {
        QuantHead::Q8_0 => tern::quant::q8_0::quantize(&x, &mut w),
        QuantHead::Q6K => tern::quant::q6_k::quantize(&x, &mut w),
    }
    w
}

/// Σ_b |d_w · d_x| · Σ_i |w_i · x_i| of one Q8_0 row and token: the sum of
/// the magnitudes of every product, which bounds the rounding of any
/// summation order; the float tolerance is relative to it.
fn q8_0_mag(row: &[u8], x: &BlockActs, t: usize) -> f32 {
    let a = x.row(t);
    row.chunks_exact(34)
        .enumerate()
        .map(|(b, wb)| {
            let dw = f16::from_le_bytes([wb[0], wb[1]]).to_f32();
            let s: i32 = wb[2..]
                .iter()
                .zip(&a[32 * b..32 * b + 32])
                .map(|(&q, &v)| (q as i8 as i32 * v as i32).abs())
                .sum();
            (dw * x.scales(t)[b]).abs() * s as f32
        })
        .sum()
}

fn qgemm_as(
    kern: &Kernel,
    w: &[u8],
    layout: RowLayout,
    v0: usize,
    v1: usize,
    x: &BlockActs,
) -> Vec<f32> {
    let mut out = vec![f32::NAN; x.n * (v1 - v0)];
    kern.quant_gemm(w, layout, v0, v1, x, &mut out);
    out
}

fn qgemm(kern: &Kernel, w: &[u8], v0: usize, v1: usize, x: &BlockActs) -> Vec<f32> {
    qgemm_as(kern, w, RowLayout::Rows, v0, v1, x)
}

#[test]
fn quant_head_gemm_agrees_with_scalar_and_does_not_depend_on_tiling() {
    let mut rng = Rng(0xbead);
    for case in 0..40 {
        let kind = if case % 2 == 0 {
            QuantHead::Q8_0
        } else {
            QuantHead::Q6K
        };
        let k = kind.block() * [1, 3, 10][rng.below(3)];
        // 21, 33, 45 and 67 rows: the one-token Q6_K streams (two or four
        // groups of four rows at once) with groups and rows left over.
        let rows = [1, 3, 4, 5, 13, 21, 33, 45, 67][rng.below(9)];
        let n = [1, 2, 3, 4, 5, 9][rng.below(6)];
        let mut w = quant_head(&mut rng, kind, rows, k);
        if kind == QuantHead::Q6K {
            // The kernels read tern's load-time layout.
            tern::quant::q6_k::repack(&mut w);
        }
        let mut xf: Vec<f32> = (0..n * k).map(|_| rng.f32() * 4.0).collect();
        if n > 1 {
            xf[k..2 * k].fill(0.0); // an all-zero token: d = 0
        }
        let x = BlockActs::quantize(kind, &xf, k);
        let want = qgemm(&scalar::SCALAR, &w, 0, rows, &x);
        let rb = kind.row_bytes(k);
        let mut wi = w.clone();
        layout::interleave4(kind.row_bytes(k), kind.block_bytes(), &mut wi);
        if rows >= 4 && k > kind.block() {
            assert_ne!(wi, w, "interleaving moved no block");
        }
        for (kern, pool) in plans_and_pools() {
            pool.install(|| {
                let got = qgemm(kern, &w, 0, rows, &x);
                // Interleaved rows give the same bits, whole and from any row
                // to the end or to a row inside a group.
                for v0 in [0, 1, 2.min(rows - 1), 5.min(rows - 1)] {
                    for v1 in [rows, (rows - rows / 3).max(v0)] {
                        let il = qgemm_as(kern, &wi, RowLayout::Interleaved4, v0, v1, &x);
                        let plain = qgemm(kern, &w, v0, v1, &x);
                        assert_eq!(
                            il,
                            plain,
                            "{} {:?} interleaved rows {}..{} of {} k {} n {}",
                            kern.variant(),
                            kind,
                            v0,
                            v1,
                            rows,
                            k,
                            n
                        );
                    }
                }
                // Q6_K sums each block exactly in integers first: every kernel
                // gives the scalar bits.
                if kind == QuantHead::Q6K {
                    assert_eq!(
                        got,
                        want,
                        "{} Q6_K k {} rows {} n {}",
                        kern.variant(),
                        k,
                        rows,
                        n
                    );
                }
                for t in 0..n {
                    for v in 0..rows {
                        if kind == QuantHead::Q6K {
                            continue;
                        }
                        let (g, s) = (got[t * rows + v], want[t * rows + v]);
                        let mag = q8_0_mag(&w[v * rb..(v + 1) * rb], &x, t);
                        assert!(
                            (g - s).abs() <= 2e-5 * mag + 1e-30,
                            "{} {:?} k {} rows {} n {}: row {} token {}: {} vs scalar {} (mag {})",
                            kern.variant(),
                            kind,
                            k,
                            rows,
                            n,
                            v,
                            t,
                            g,
                            s,
                            mag
                        );
                    }
                }
                // A sub-range of rows, and each token on its own, give the
                // same bits as the full product.
                if rows > 1 {
                    let part = qgemm(kern, &w, 1, rows, &x);
                    for t in 0..n {
                        assert_eq!(
                            &part[t * (rows - 1)..(t + 1) * (rows - 1)],
                            &got[t * rows + 1..(t + 1) * rows],
                            "{} rows 1..{}",
                            kern.variant(),
                            rows
                        );
                    }
                }
                for t in 0..n {
                    let one = BlockActs::quantize(kind, &xf[t * k..(t + 1) * k], k);
                    assert_eq!(
                        qgemm(kern, &w, 0, rows, &one),
                        &got[t * rows..(t + 1) * rows],
                        "{} token {} alone",
                        kern.variant(),
                        t
                    );
                }
            });
        }
    }
}

#[test]
fn quant_head_rows_read_back_through_the_interleaved_layout() {
    let mut rng = Rng(21);
    for kind in [QuantHead::Q8_0, QuantHead::Q6K] {
        let (rows, k) = (7, kind.block() * 3);
        let w = quant_head(&mut rng, kind, rows, k);
        let rb = kind.row_bytes(k);
        let head = weights::quant_blocks(kind, w.clone(), rows, k).unwrap();
        for v in 0..rows {
            let mut want = vec![0f32; k];
            match kind {
                QuantHead::Q8_0 => {
                    tern::quant::q8_0::dequantize(&w[v * rb..(v + 1) * rb], &mut want)
                }
                QuantHead::Q6K => {
                    tern::quant::q6_k::dequantize(&w[v * rb..(v + 1) * rb], &mut want)
                }
            }
            let mut got = vec![f32::NAN; k];
            head.row(v, &mut got);
            assert_eq!(got, want, "{:?} row {}", kind, v);
        }
    }
}

#[test]
fn quant_head_is_independent_of_threads_and_batch() {
    let mut rng = Rng(11);
    let (vocab, d) = (301, 512);
    let heads: Vec<Weight> = [QuantHead::Q8_0, QuantHead::Q6K]
        .into_iter()
        .map(|kind| {
            weights::quant_blocks(kind, quant_head(&mut rng, kind, vocab, d), vocab, d).unwrap()
        })
        .collect();
    let x: Vec<f32> = (0..6 * d).map(|_| rng.f32() * 3.0).collect();
    let run = |threads: usize, n: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut res = Vec::new();
            for k in all_variants() {
                for h in &heads {
                    let mut logits = vec![0f32; n * vocab];
                    h.matmul(k, &Acts::new(&x[..n * d], d), &mut logits);
                    res.push(logits);
                }
            }
            res
        })
    };
    let one = run(1, 6);
    assert_eq!(one, run(2, 6));
    assert_eq!(one, run(3, 6));
    for n in [1, 2, 5] {
        for (a, b) in one.iter().zip(&run(2, n)) {
            assert_eq!(&a[..n * vocab], &b[..]);
        }
    }
}

// ------------------------------------------------------------ whole model

fn builtin() -> tern::model::Model {
    let p =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tern-shakespeare-i2_s.gguf");
    tern::model::Model::load(&p).expect("built-in model loads")
}

#[test]
fn any_batch_size_gives_the_same_logits_as_one_token_at_a_time() {
    let m = builtin();
    let nv = m.hp.n_vocab as u32;
    let toks: Vec<u32> = (0..530u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) % nv)
        .collect();
    // One token at a time: the reference for every position.
    let mut ctx = tern::model::Context::new(&m, toks.len(), false);
    let mut seq = Vec::new();
    for &t in &toks {
        seq.push(ctx.eval(&[t], false).unwrap());
    }
    // Batches of every awkward size, past MAX_BATCH (512) included; each
    // batch's last row must match the sequential run bit for bit (integer
    // products are exact, the float steps are per row and per position).
    let mut ctx = tern::model::Context::new(&m, toks.len(), false);
    let mut at = 0;
    for n in [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 400] {
        let l = ctx.eval(&toks[at..at + n], false).unwrap();
        at += n;
        assert_eq!(l, seq[at - 1], "batch of {} ending at {}", n, at);
    }
    // All rows of a batch.
    let mut ctx = tern::model::Context::new(&m, toks.len(), false);
    let all = ctx.eval(&toks, true).unwrap();
    let v = m.hp.n_vocab;
    for (j, s) in seq.iter().enumerate() {
        assert_eq!(
            &all[j * v..(j + 1) * v],
            &s[..],
            "row {} of a {}-token batch",
            j,
            toks.len()
        );
    }
}

fn tern_bin(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .output()
        .expect("tern runs")
}

#[test]
fn cli_bench_md_and_llama_bench_json() {
    let o = tern_bin(&[
        "bench", "-p", "16", "-n", "4", "-t", "1,2", "-r", "2", "--bw-mib", "8",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = String::from_utf8_lossy(&o.stdout);
    for want in [
        "| model |",
        "pp16",
        "tg4",
        "read bandwidth, 1 thread",
        "read bandwidth, 2 threads",
        "of huge pages",
        "bytes read per generated token",
    ] {
        assert!(md.contains(want), "missing {:?} in\n{}", want, md);
    }
    let o = tern_bin(&[
        "bench", "-p", "8", "-n", "2", "-t", "1", "-r", "1", "-o", "json", "--bw-mib", "8",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    let recs = v.as_array().expect("a list of records");
    assert_eq!(recs.len(), 2);
    for r in recs {
        for key in [
            "n_prompt",
            "n_gen",
            "n_threads",
            "avg_ts",
            "stddev_ts",
            "model_size",
            "model_filename",
            "samples_ts",
        ] {
            assert!(r.get(key).is_some(), "record lacks {}: {}", key, r);
        }
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(recs[0]["n_prompt"], 8);
    assert_eq!(recs[1]["n_gen"], 2);
    assert!(recs[1].get("bound_frac").is_some());

    // llama-bench's -o jsonl (an object a line) and -o csv (a header,
    // then a row a test, llama-bench's column names first).
    let o = tern_bin(&[
        "bench", "-p", "8", "-n", "2", "-t", "1", "-r", "1", "-o", "jsonl", "--bw-mib", "8",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object a line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (&lines[0]["n_prompt"], &lines[1]["n_gen"]),
        (&8.into(), &2.into())
    );
    let o = tern_bin(&[
        "bench", "-p", "8", "-n", "2", "-t", "1", "-r", "1", "-o", "csv", "--bw-mib", "8",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut r = csv::Reader::from_reader(&o.stdout[..]);
    let header = r.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert_eq!(rows.len(), 2);
    let cell = |row: usize, name: &str| -> String {
        let c = header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no {name} column"));
        rows[row][c].to_string()
    };
    assert_eq!(
        (cell(0, "n_prompt"), cell(1, "n_gen")),
        ("8".into(), "2".into())
    );
    assert!(cell(1, "avg_ts").parse::<f64>().unwrap() > 0.0);
    // The bound is a generation test's only.
    assert_eq!(cell(0, "bound_frac"), "");
    assert!(cell(1, "bound_frac").parse::<f64>().is_ok());
    assert_eq!(
        cell(0, "model_type"),
        recs[0]["model_type"].as_str().unwrap()
    );
}

/// llama-bench's `-pg PP,TG`: a prompt then generated tokens, timed
/// together, named `ppPP+tgTG`, with no bound (it is not one token at a
/// time); malformed values are one-line errors.
#[test]
fn cli_bench_prompt_then_generation() {
    let o = tern_bin(&[
        "bench", "-p", "0", "-n", "0", "-pg", "8,2", "-t", "1", "-r", "1", "-o", "json",
        "--bw-mib", "8",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    let recs = v.as_array().expect("a list of records");
    assert_eq!(recs.len(), 1, "{v}");
    assert_eq!(recs[0]["n_prompt"], 8);
    assert_eq!(recs[0]["n_gen"], 2);
    assert!(recs[0]["avg_ts"].as_f64().unwrap() > 0.0);
    assert!(recs[0].get("bound_frac").is_none(), "{v}");
    let o = tern_bin(&[
        "bench", "-p", "8", "-n", "2", "--pg", "8,2", "-t", "1", "-r", "1", "--bw-mib", "8",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = String::from_utf8_lossy(&o.stdout);
    for test in ["| pp8 |", "| tg2 |", "| pp8+tg2 | "] {
        assert!(md.contains(test), "{test} in\n{md}");
    }
    // -p, -n, -d and -t collect when repeated, as llama-bench's do; -t -1
    // is the default count.
    let o = tern_bin(&[
        "bench", "-p", "8", "-p", "4,2", "-n", "0", "-t", "1", "-t", "-1", "-r", "1", "--bw-mib",
        "8", "-o", "json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    let runs: Vec<(u64, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["n_threads"].as_u64().unwrap(),
                r["n_prompt"].as_u64().unwrap(),
            )
        })
        .collect();
    let default = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert_eq!(runs.len(), 6, "{runs:?}");
    assert_eq!(&runs[..3], &[(1, 8), (1, 4), (1, 2)]);
    assert!(
        runs[3..].iter().all(|&(t, _)| t >= 1 && t <= default),
        "{runs:?}"
    );
    for (arg, needle) in [
        ("8", "give two numbers, PP,TG"),
        ("8,2,1", "give two numbers, PP,TG"),
        ("0,4", "must be at least 1"),
        ("x,4", "not a whole number"),
    ] {
        let o = tern_bin(&["bench", "-pg", arg, "-r", "1"]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("tern: error:") && err.contains(needle),
            "{arg}: {err}"
        );
    }
    let o = tern_bin(&["bench", "-pg", "8,2", "--bitnet-cpp"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("drop -pg"));
}

/// `-m` several times, or a comma-separated list as llama-bench takes it:
/// every model timed, one table; a file whose name holds a comma is one
/// model; a missing file fails before anything is timed.
#[test]
fn cli_bench_several_models() {
    let dir = tempfile::tempdir().unwrap();
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tern-shakespeare-i2_s.gguf");
    let a = dir.path().join("a.gguf");
    let bc = dir.path().join("b,c.gguf");
    std::fs::copy(&src, &a).unwrap();
    std::fs::copy(&src, &bc).unwrap();
    let (a, bc) = (a.to_str().unwrap(), bc.to_str().unwrap());
    let pair = format!("{a},{a}");
    let o = tern_bin(&[
        "bench", "-m", &pair, "-m", bc, "-p", "8", "-n", "0", "-t", "1", "-r", "1", "-o", "json",
        "--bw-mib", "8",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    let names: Vec<&str> = v
        .as_array()
        .expect("a list of records")
        .iter()
        .map(|r| r["model_filename"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.gguf", "a.gguf", "b,c.gguf"]);
    let o = tern_bin(&[
        "bench", "-m", a, "-m", bc, "-p", "8", "-n", "2", "-t", "1", "-r", "1", "--bw-mib", "8",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = String::from_utf8_lossy(&o.stdout);
    assert_eq!(md.matches("| model |").count(), 1, "{md}");
    assert_eq!(md.matches("| pp8 |").count(), 2, "{md}");
    assert!(
        md.contains("\na.gguf:\n") && md.contains("\nb,c.gguf:\n"),
        "{md}"
    );
    // An -m that names no file is an error, not the built-in model.
    let o = tern_bin(&["bench", "-m", " , ", "-r", "1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no model file named"), "{err}");
    let missing = dir.path().join("missing.gguf");
    let o = tern_bin(&["bench", "-m", a, "-m", missing.to_str().unwrap(), "-r", "1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("tern: error: cannot open") && err.contains("missing.gguf"),
        "{err}"
    );
    // Refused before the first model was loaded or timed.
    assert!(!err.contains("tern bench: a.gguf"), "{err}");
    assert!(o.stdout.is_empty());
    // A file that opens but does not load: the models before it are
    // reported, then the error.
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF not really").unwrap();
    let o = tern_bin(&[
        "bench",
        "-m",
        a,
        "-m",
        bad.to_str().unwrap(),
        "-p",
        "8",
        "-n",
        "0",
        "-t",
        "1",
        "-r",
        "1",
        "--bw-mib",
        "8",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("tern: error:") && err.contains("bad.gguf"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let md = String::from_utf8_lossy(&o.stdout);
    assert_eq!(md.matches("| pp8 |").count(), 1, "{md}");
}

#[test]
fn cli_bench_bad_arguments_fail_cleanly() {
    for (args, needle) in [
        (&["bench", "-o", "xml"][..], "md, json, jsonl or csv"),
        (&["bench", "-t", "0"][..], "at least 1"),
        (&["bench", "-t", "two"][..], "not a whole number"),
        (&["bench", "-p", "0", "-n", "0"][..], "nothing to time"),
        (&["bench", "-r", "0"][..], "between 1 and"),
        (&["bench", "-t", "100000"][..], "between 1 and 512"),
        (&["bench", "--bw-mib", "0"][..], "choose 1 to 16384"),
        (
            &["bench", "--bw-mib", "18446744073709551615"][..],
            "choose 1 to 16384",
        ),
        (
            &["bench", "-m", "/nonexistent/model.gguf"][..],
            "model.gguf",
        ),
    ] {
        let o = tern_bin(args);
        assert!(!o.status.success(), "{:?} succeeded", args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("tern: error:") && err.contains(needle),
            "{:?}: {}",
            args,
            err
        );
        assert!(!err.contains("panicked"), "{:?}: {}", args, err);
    }
}

#[test]
fn cli_forcing_a_missing_kernel_is_a_clean_error() {
    #[cfg(target_arch = "x86_64")]
    let missing = "neon";
    #[cfg(not(target_arch = "x86_64"))]
    let missing = "avx2";
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["run", "-p", "x", "-n", "1"])
        .env("TERN_KERNEL", missing)
        .output()
        .expect("tern runs");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not available on this CPU"), "{}", err);
}

#[test]
fn stream_plans_ask_only_for_counts_the_tiles_come_in() {
    // The drivers take the four-group ternary tile, the four-row float
    // tile and the four-group Q6_K tile for any count but 8 / 2 / 2: a
    // plan with another count would silently read four.
    use tern::kernels::StreamPlan;
    for p in [StreamPlan::WIDE, StreamPlan::NARROW] {
        for c in p.ternary {
            assert!([4, 8].contains(&c), "{}: ternary {}", p.name, c);
        }
        for c in p.float.into_iter().chain(p.q6_k) {
            assert!([2, 4].contains(&c), "{}: {}", p.name, c);
        }
    }
    for k in test_variants() {
        assert!([StreamPlan::WIDE, StreamPlan::NARROW].contains(k.plan()));
    }
}

#[test]
fn cli_bad_stream_plan_is_a_clean_error() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["run", "-p", "x", "-n", "1"])
        .env("TERN_STREAMS", "sideways\n")
        .output()
        .expect("tern runs");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{}",
        err
    );
    assert!(err.contains("TERN_STREAMS takes wide or narrow"), "{}", err);
    assert!(!err.contains("panicked"), "{}", err);
    // Each plan by name runs, with the same text (the plans change which
    // rows go together, never a value).
    let run = |plan: &str| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["run", "-p", "ROMEO.", "-n", "8", "--seed", "7"])
            .env("TERN_STREAMS", plan)
            .output()
            .expect("tern runs");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    assert_eq!(run("wide"), run("narrow"));
}

#[test]
fn softmax_agrees_with_the_reference_to_rounding() {
    // Every kernel's softmax against the libm reference (scalar) on rows of
    // every tail length, wide ranges (scores far below the max underflow to
    // 0 in both) and ties; each value within 8 ulp-scale of the reference
    // and the row summing to 1.
    let mut rng = Rng(0x50f7);
    for n in (1..=40).chain([64, 255, 1000]) {
        for spread in [0.1f32, 10.0, 300.0] {
            let row: Vec<f32> = (0..n)
                .map(|i| {
                    if i % 7 == 3 {
                        2.5
                    } else {
                        (rng.f32() - 0.5) * spread
                    }
                })
                .collect();
            let mut want = row.clone();
            scalar::SCALAR.softmax(&mut want);
            for k in all_variants() {
                let mut got = row.clone();
                k.softmax(&mut got);
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 8.0 * f32::EPSILON * w + 1e-37,
                        "{} n {} spread {} [{}]: {} vs {}",
                        k.variant(),
                        n,
                        spread,
                        i,
                        g,
                        w
                    );
                }
                let s: f32 = got.iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "{} sums to {}", k.variant(), s);
            }
        }
    }
}

//! Compute kernels: one tiling driver per operation over small per-ISA
//! tiles, chosen at run time from the CPU's features
//! (`TERN_KERNEL=scalar|avx2|avx512|neon` forces one, the family's best
//! variant; `avx512bw|avx512vnni|neon+dotprod` one variant, see [`select`]).
//!
//! The shape of the code:
//!
//! * **Drivers** ([`ternary`], [`float`], [`qhead`]) own the loops: which
//!   rows and tokens go together, how activations and weights are laid out
//!   for the tile, prefetch distances aside. They are written once.
//! * **Tiles** live in the ISA files (`scalar`, `avx2`, `avx512`, `neon`):
//!   a few rows × a few tokens of one operation, plus the small vector
//!   primitives (activation quantization, dots, axpy, attention rows).
//! * A **function table** ([`Ops`]) per kernel names its tiles. An ISA
//!   fills in what it has and takes the rest from the table it is built on
//!   (`..scalar::OPS`, or `..avx2::OPS` for AVX-512), as ggml's generic
//!   reference functions fill the gaps of its SIMD ones.
//! * Weight **formats** ([`weights`]) own their load/repack, activation
//!   preparation and product; the model only holds `weights::Weight`s.
//!
//! `scalar` is the reference. Every SIMD table returns bit-identical
//! integers for the ternary and quantized-head block products
//! (tests/kernels.rs checks it over random shapes); float results (float
//! heads, attention, Q8_0 head sums) may differ in the last bits because
//! the lanes sum in a different order, but each kernel's results do not
//! depend on the thread count, the tile shape or the number of tokens in a
//! batch.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod float;
pub mod layout;
pub mod matmul;
pub mod memory;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod ops;
pub mod qhead;
pub mod scalar;
pub mod ternary;
pub mod weights;

pub use layout::RowLayout;
pub use qhead::{BlockActs, QuantHead};
pub use ternary::{Packed, TileShape, BLOCK_BYTES, GROUP, GROUP_BLOCK_BYTES, QK};

use half::f16;
use std::sync::OnceLock;

/// The table of one kernel: its tiles and primitives. Built as a constant
/// per ISA; entries an ISA does not provide are copied from the table it
/// builds on. Tile entries are `unsafe fn`s over raw pointers: the drivers
/// check every size once and then call them; a table is only handed out
/// (see [`available`]) on a CPU that has its features.
#[derive(Clone, Copy)]
pub struct Ops {
    /// Ternary: four rows of one packed group × 1..=4 tokens, on the
    /// repacked weights directly (generation and small batches).
    pub i2s_packed: ternary::PackedTile,
    /// Ternary, one token: four or eight distant groups at once
    /// ([`ternary::Streams`]); `None`: group by group through `i2s_packed`.
    pub i2s_streams: Option<ternary::Streams>,
    /// Ternary: the register tile of prompt batches over unpacked codes,
    /// its shape, and the routine that unpacks row groups into it.
    pub i2s_tile: ternary::CodeTile,
    pub i2s_shape: TileShape,
    pub i2s_unpack: ternary::Unpack,
    /// Tokens from which the ternary products take the panels and
    /// `i2s_tile` instead of `i2s_packed` ([`ternary::PANEL_MIN_TOKENS`]
    /// unless the ISA measured otherwise; `usize::MAX`: never).
    pub i2s_panel_min_tokens: usize,
    /// Float GEMM tiles: ≤ 4 rows × 1 token and ≤ 2 rows × ≤ 4 tokens.
    pub f16_tile: float::Tile,
    pub f32_tile: float::Tile,
    /// F16 / F32, one token: two or four distant rows at once
    /// ([`float::Streams`]); `None`: tile by tile through `f16_tile` /
    /// `f32_tile`.
    pub f16_streams: Option<float::Streams>,
    pub f32_streams: Option<float::Streams>,
    /// Quantized-head tiles: ≤ 4 rows × 1 token and 1 row × ≤ 4 tokens.
    pub q8_0_tile: qhead::Tile,
    pub q6_k_tile: qhead::Tile,
    /// Q6_K, one token: two or four distant groups of interleaved rows at
    /// once ([`qhead::Streams`]); `None`: tile by tile through `q6_k_tile`.
    pub q6_k_streams: Option<qhead::Streams>,
    /// Exact integer dots of one quantized head row, per block.
    pub q8_0_block_dots: fn(&[u8], &[i8], &mut [i32]),
    pub q6_k_block_dots: qhead::Q6KBlockDots,
    /// Per-token activation quantization (docs §2).
    pub quantize_act: fn(&[f32], &mut [i8]) -> (f32, i32),
    pub dot_f32: fn(&[f32], &[f32]) -> f32,
    pub dot_f16: fn(&[f16], &[f32]) -> f32,
    pub axpy_f16: fn(f32, &[f16], &mut [f32]),
    pub axpy_f32: fn(f32, &[f32], &mut [f32]),
    pub attn_scores: fn(ops::Kv, usize, usize, &[f32], f32, &mut [f32]),
    pub attn_values: fn(ops::Kv, usize, usize, &[f32], &mut [f32]),
    /// Scores for the query heads that share one KV head (grouped-query
    /// attention), each K row read once for all of them; `None`: head by
    /// head through `attn_scores` (see [`Kernel::attn_scores_group`]).
    pub attn_scores_group: Option<ops::ScoresGroup>,
    /// Weighted values for those heads, each V row read once; `None`: head
    /// by head through `attn_values` (see [`Kernel::attn_values_group`]).
    pub attn_values_group: Option<ops::ValuesGroup>,
    /// In-place softmax of one row of attention scores.
    pub softmax: fn(&mut [f32]),
}

/// How many distant streams a kernel's one-token products read at once,
/// per operation, with one thread in the pool and with several: what a
/// core reads fastest depends on the CPU (its prefetchers and memory),
/// not on the ISA, so each x86 kernel comes with both plans and the CPU
/// picks one ([`StreamPlan::for_this_cpu`]).
///
/// Measured on the AMD EPYC Zen 5 VM (2026-12-03, `examples/tg_profile`,
/// builds alternated, three rounds, % of the streaming sum measured
/// beside each; the 2B-4T files): ternary groups, four against eight,
/// gate·up 94–96% against 78–90% on one thread, 91–102% against 77–79%
/// on two; Q6_K head groups, two against four, 101–105% against 89–96%
/// on one thread, 96–100% against 48–82% on two; F16 head rows, two
/// against four, 83–84% against 86–87% on one thread but 97–101% against
/// 81–85% on two. A plain read of 1 GiB there shows the same lean: eight
/// interleaved streams 33.0 GB/s on one thread against 37.4 with four.
/// The wide counts are the ones tuned on the Intel Xeon VM (2026-12-02:
/// eight ternary groups against four, four Q6_K groups against eight and
/// one, `avx512::tile_streams_vnni`, `qhead::StreamsTile`); two float
/// rows or two Q6_K groups were not tried there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPlan {
    /// `wide` or `narrow`, as `TERN_STREAMS` names it.
    pub name: &'static str,
    /// Ternary row groups (4 or 8): one thread, several.
    pub ternary: [usize; 2],
    /// F16 / F32 rows (2 or 4): one thread, several.
    pub float: [usize; 2],
    /// Q6_K groups of four rows (2 or 4): one thread, several.
    pub q6_k: [usize; 2],
}

impl StreamPlan {
    /// As tuned on the Intel Xeon VM: eight ternary groups, four float
    /// rows, four Q6_K groups.
    pub const WIDE: StreamPlan = StreamPlan {
        name: "wide",
        ternary: [8, 8],
        float: [4, 4],
        q6_k: [4, 4],
    };
    /// As measured on the AMD Zen 5 VM: four ternary groups, four float
    /// rows on one thread and two on several, two Q6_K groups.
    pub const NARROW: StreamPlan = StreamPlan {
        name: "narrow",
        ternary: [4, 4],
        float: [4, 2],
        q6_k: [2, 2],
    };

    /// `TERN_STREAMS` (`wide` or `narrow`) where set, else narrow on AMD
    /// (told by SSE4a, an extension only AMD's and Hygon's x86 cores
    /// have) and wide elsewhere. Only Zen 5 (narrow) and one Intel Xeon
    /// (wide) were measured; Zen 3 and Zen 4 follow the vendor untested.
    pub fn for_this_cpu() -> StreamPlan {
        match streams_override() {
            Ok(Some(p)) => p,
            _ if amd() => StreamPlan::NARROW,
            _ => StreamPlan::WIDE,
        }
    }

    fn now(counts: [usize; 2]) -> usize {
        counts[usize::from(rayon::current_num_threads() > 1)]
    }

    /// Ternary groups for a product run in the current pool.
    pub fn ternary_now(&self) -> usize {
        StreamPlan::now(self.ternary)
    }

    /// Float rows for a product run in the current pool.
    pub fn float_now(&self) -> usize {
        StreamPlan::now(self.float)
    }

    /// Q6_K groups for a product run in the current pool.
    pub fn q6_k_now(&self) -> usize {
        StreamPlan::now(self.q6_k)
    }
}

#[cfg(target_arch = "x86_64")]
fn amd() -> bool {
    is_x86_feature_detected!("sse4a")
}

#[cfg(not(target_arch = "x86_64"))]
fn amd() -> bool {
    false
}

/// One kernel: a name `TERN_KERNEL` selects it by, the variant in use
/// (`neon+dotprod`, `avx512vnni`), its function table and its
/// [`StreamPlan`].
pub struct Kernel {
    name: &'static str,
    variant: &'static str,
    ops: Ops,
    plan: StreamPlan,
}

impl Kernel {
    /// A kernel over `ops` with the wide plan. Private to the crate: a
    /// table may hold SIMD code, so only [`available`] (which checks the
    /// CPU) hands one out.
    pub(crate) const fn new(name: &'static str, variant: &'static str, ops: Ops) -> Kernel {
        Kernel {
            name,
            variant,
            ops,
            plan: StreamPlan::WIDE,
        }
    }

    /// The same kernel with another stream plan (only x86 kernels come
    /// with both).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) const fn with_plan(self, plan: StreamPlan) -> Kernel {
        Kernel { plan, ..self }
    }

    /// How many distant streams its one-token products read at once.
    pub fn plan(&self) -> &StreamPlan {
        &self.plan
    }

    /// Its family's name, which `TERN_KERNEL` selects the family's best
    /// variant by (a variant is also selected by its own [`Kernel::variant`]
    /// name where that differs).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The name with the optional extension in use (`neon+dotprod`, `avx512vnni`).
    pub fn variant(&self) -> &'static str {
        self.variant
    }

    pub(crate) fn ops(&self) -> &Ops {
        &self.ops
    }

    /// The register tile of this kernel's ternary prompt path.
    pub fn i2s_shape(&self) -> TileShape {
        self.ops.i2s_shape
    }

    /// This kernel's panel unpack ([`ternary::Unpack`] with its own shape):
    /// `groups` packed groups of `nb` blocks at `w` into `dst`.
    ///
    /// # Safety
    /// `w` must hold `groups · nb · 128` bytes and `dst` `groups · 4 · nb ·
    /// 128` bytes.
    pub unsafe fn i2s_unpack(&self, w: *const u8, nb: usize, groups: usize, dst: *mut u8) {
        // SAFETY: the caller's extents; the table is this CPU's.
        unsafe { (self.ops.i2s_unpack)(w, nb, groups, self.ops.i2s_shape, dst) }
    }

    /// Ternary products for the row groups `g0..g1` of `w` against `n`
    /// int8 activation rows laid out back to back in `xs` (`n · w.cols()`
    /// values; `sums[t]` = Σ of row t, `n = sums.len()`):
    /// `out[t · ld + r]` = Σ_k T[4·g0 + r][k] · xs[t][k] with
    /// `ld = 4 · (g1 - g0)`; padding rows past `w.rows()` come out as 0.
    /// Exact, so equal across kernels. See [`ternary::gemm`].
    pub fn i2s_gemm(
        &self,
        w: &Packed,
        g0: usize,
        g1: usize,
        xs: &[i8],
        sums: &[i32],
        out: &mut [i32],
    ) {
        let acts = ternary::Acts::new(self, xs, sums, w.cols());
        ternary::gemm(self, w, g0, g1, &acts, out)
    }

    /// Float rows `v0..v1` of `w` (row length `d`, f16) against `n` f32
    /// rows `xs`: `out[t · (v1 - v0) + (v - v0)] = w_v · xs_t`.
    #[allow(clippy::too_many_arguments)]
    pub fn f16_gemm(
        &self,
        w: &[f16],
        d: usize,
        v0: usize,
        v1: usize,
        xs: &[f32],
        n: usize,
        out: &mut [f32],
    ) {
        float::gemm(self, float::Rows::F16(w), d, v0, v1, xs, n, out)
    }

    /// As [`Kernel::f16_gemm`] for f32 weights.
    #[allow(clippy::too_many_arguments)]
    pub fn f32_gemm(
        &self,
        w: &[f32],
        d: usize,
        v0: usize,
        v1: usize,
        xs: &[f32],
        n: usize,
        out: &mut [f32],
    ) {
        float::gemm(self, float::Rows::F32(w), d, v0, v1, xs, n, out)
    }

    /// Rows `v0..v1` of a quantized head of `x.kind` blocks (Q8_0 weights
    /// with Q8_0 activations, or Q6_K with Q8_K; row length `x.k`, stored in
    /// `w` as `layout` says; Q6_K blocks in tern's load-time layout,
    /// `quant::q6_k::repack`, with `x` as [`BlockActs::quantize`] orders
    /// it — GGUF's Q6_K bytes give wrong sums) against the `x.n`
    /// activation rows of `x`:
    /// `out[t · (v1 - v0) + (v - v0)] = Σ_b d_w[v][b] · d_x[t][b] · dot_b`.
    /// The integer block dots are exact; how the float terms are summed is
    /// the kernel's, fixed per kernel (independent of `v0`, `v1`, `x.n` and
    /// the layout).
    pub fn quant_gemm(
        &self,
        w: &[u8],
        layout: RowLayout,
        v0: usize,
        v1: usize,
        x: &BlockActs,
        out: &mut [f32],
    ) {
        qhead::gemm(self, layout, w, v0, v1, x, out)
    }

    /// Integer dots of one Q8_0 head row `w` (`k / 32` blocks of 34 bytes)
    /// with Q8_0 activation quants `a` (`k` values, each in -127..=127):
    /// `out[b] = Σ_{i<32} w_q[32b + i] · a[32b + i]`. Exact.
    pub fn q8_0_block_dots(&self, w: &[u8], a: &[i8], out: &mut [i32]) {
        qhead::check_block_dots(QuantHead::Q8_0, w, a, out);
        (self.ops.q8_0_block_dots)(w, a, out)
    }

    /// Integer dots of one Q6_K head row `w` (`k / 256` blocks of 210 bytes
    /// in tern's load-time layout, `quant::q6_k::repack`) with Q8_K
    /// activation quants `a` (each in -128..=127, in the same lane order,
    /// `quant::q6_k::order_q8_k`) and their sums per 16 (`bsums`, one per
    /// sub-block, value order): `out[b] = Σ_j scale_j · Σ_{i in sub-block
    /// j} (q_i − 32) · a_i`. Exact.
    pub fn q6_k_block_dots(&self, w: &[u8], a: &[i8], bsums: &[i16], out: &mut [i32]) {
        qhead::check_block_dots(QuantHead::Q6K, w, a, out);
        assert_eq!(bsums.len(), a.len() / 16, "activation sums");
        (self.ops.q6_k_block_dots)(w, a, bsums, out)
    }

    /// Per-token activation quantization (docs §2): `a = 127 / max(|x|, 1e-5)`,
    /// `q = clamp(round_half_even(x·a), -128, 127)`. Returns (a, Σq).
    /// Bit-identical across kernels.
    pub fn quantize_act(&self, x: &[f32], q: &mut [i8]) -> (f32, i32) {
        assert_eq!(x.len(), q.len(), "activation length");
        (self.ops.quantize_act)(x, q)
    }

    /// Dot of f32 vectors (over the shorter length).
    pub fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        (self.ops.dot_f32)(&a[..n], &b[..n])
    }

    /// Dot of f16 values with f32 values (over the shorter length).
    pub fn dot_f16(&self, a: &[f16], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        (self.ops.dot_f16)(&a[..n], &b[..n])
    }

    /// `y += p · x` (f16 `x`, over the shorter length).
    pub fn axpy_f16(&self, p: f32, x: &[f16], y: &mut [f32]) {
        let n = x.len().min(y.len());
        (self.ops.axpy_f16)(p, &x[..n], &mut y[..n])
    }

    /// `y += p · x` (over the shorter length).
    pub fn axpy_f32(&self, p: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        (self.ops.axpy_f32)(p, &x[..n], &mut y[..n])
    }

    /// Attention scores of one head: `scores[t] = scale · (K_t · q)` for
    /// `t < scores.len()`, `K_t` = `q.len()` values at `t·stride + off` of `k`.
    /// Each score equals `scale · dot` of the same kernel's `dot_f16`/`dot_f32`.
    pub fn attn_scores(
        &self,
        k: ops::Kv,
        stride: usize,
        off: usize,
        q: &[f32],
        scale: f32,
        scores: &mut [f32],
    ) {
        ops::check_rows(k, stride, off, q.len(), scores.len());
        (self.ops.attn_scores)(k, stride, off, q, scale, scores)
    }

    /// Weighted sum of one head's values: `out = Σ_t p[t] · V_t`, summed in
    /// position order as repeated `axpy` would.
    pub fn attn_values(&self, v: ops::Kv, stride: usize, off: usize, p: &[f32], out: &mut [f32]) {
        ops::check_rows(v, stride, off, out.len(), p.len());
        (self.ops.attn_values)(v, stride, off, p, out)
    }

    /// Attention scores of `g = qs.len() / d` query heads that share one KV
    /// head: `scores[h · npos + t]` = what [`Kernel::attn_scores`] gives for
    /// head `h` (`qs[h·d .. (h+1)·d]`) and position `t`, bit for bit, with
    /// `npos = scores.len() / g`.
    ///
    /// Does nothing when `qs` or `scores` is empty.
    ///
    /// # Panics
    /// If `d` is 0 or does not divide `qs.len()`, if `g` does not divide
    /// `scores.len()`, or if a row lies outside `k`.
    #[allow(clippy::too_many_arguments)]
    pub fn attn_scores_group(
        &self,
        k: ops::Kv,
        stride: usize,
        off: usize,
        qs: &[f32],
        d: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        assert!(d > 0 && qs.len().is_multiple_of(d), "query heads of {}", d);
        let g = qs.len() / d;
        if g == 0 || scores.is_empty() {
            return;
        }
        assert!(scores.len().is_multiple_of(g), "scores for {} heads", g);
        let npos = scores.len() / g;
        ops::check_rows(k, stride, off, d, npos);
        match self.ops.attn_scores_group {
            Some(f) => f(k, stride, off, qs, d, scale, scores),
            None => {
                ops::scores_per_head(self.ops.attn_scores, k, stride, off, qs, d, scale, scores)
            }
        }
    }

    /// Weighted sums of values for `g` query heads that share one KV head:
    /// `outs[h·d .. (h+1)·d]` = what [`Kernel::attn_values`] gives for the
    /// weights `ps[h·npos .. (h+1)·npos]`, bit for bit (`d = outs.len() / g`,
    /// `npos = ps.len() / g`).
    ///
    /// # Panics
    /// If `g` is 0 or does not divide both lengths, or if a row lies
    /// outside `v`.
    pub fn attn_values_group(
        &self,
        v: ops::Kv,
        stride: usize,
        off: usize,
        ps: &[f32],
        g: usize,
        outs: &mut [f32],
    ) {
        assert!(
            g > 0 && ps.len().is_multiple_of(g) && outs.len().is_multiple_of(g),
            "values for {} heads",
            g
        );
        let (npos, d) = (ps.len() / g, outs.len() / g);
        if d == 0 {
            return;
        }
        ops::check_rows(v, stride, off, d, npos);
        match self.ops.attn_values_group {
            Some(f) => f(v, stride, off, ps, g, outs),
            None => ops::values_per_head(self.ops.attn_values, v, stride, off, ps, g, outs),
        }
    }

    /// In-place softmax of one row: `x[i] = exp(x[i] − max) / Σ exp(x[j] −
    /// max)`. The reference uses the `libm` crate's `expf`; SIMD versions a
    /// polynomial `exp` within 2 ulp of it (see `avx2::exp_avx2`), so rows
    /// agree with the reference to float rounding, not bit for bit.
    pub fn softmax(&self, x: &mut [f32]) {
        (self.ops.softmax)(x)
    }
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.variant)
    }
}

/// Every kernel this CPU can run, best last.
pub fn available() -> Vec<&'static Kernel> {
    let mut v: Vec<&'static Kernel> = vec![&scalar::SCALAR];
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(k) = avx2::get() {
            v.push(k);
        }
        if let Some(k) = avx512::variants().pop() {
            v.push(k);
        }
    }
    #[cfg(target_arch = "aarch64")]
    v.push(neon::get());
    v
}

/// Every kernel variant this CPU can run, including the lesser ones that
/// [`available`] hides (AVX-512 without VNNI, NEON without dotprod); the
/// property tests check each of them against the scalar reference.
pub fn all_variants() -> Vec<&'static Kernel> {
    let mut v: Vec<&'static Kernel> = vec![&scalar::SCALAR];
    #[cfg(target_arch = "x86_64")]
    {
        v.extend(avx2::get());
        v.extend(avx512::variants());
    }
    #[cfg(target_arch = "aarch64")]
    v.extend(neon::variants());
    v
}

/// The kernel called `name` (error if this CPU cannot run it), else the
/// best the CPU supports. `name` is a family (`avx512`, `neon`: its best
/// variant on this CPU) or one variant by a name of its own (`avx512bw`,
/// `avx512vnni`, `neon+dotprod`), so a lesser variant can be run and
/// measured too (not NEON without dotprod on a CPU with it: that variant
/// is named `neon`, as its family).
pub fn select(name: Option<&str>) -> anyhow::Result<&'static Kernel> {
    let all = available();
    let names = || {
        let mut n: Vec<&str> = all.iter().map(|k| k.name()).collect();
        for k in all_variants() {
            if !n.contains(&k.variant()) {
                n.push(k.variant());
            }
        }
        n.join(", ")
    };
    match name {
        Some(n) => {
            const KNOWN: [&str; 7] = [
                "scalar",
                "avx2",
                "avx512",
                "avx512bw",
                "avx512vnni",
                "neon",
                "neon+dotprod",
            ];
            if let Some(k) = all.iter().find(|k| k.name() == n) {
                Ok(*k)
            } else if let Some(k) = all_variants().into_iter().find(|k| k.variant() == n) {
                Ok(k)
            } else if KNOWN.contains(&n) {
                anyhow::bail!(
                    "kernel {:?} is not available on this CPU (have: {})",
                    n,
                    names()
                )
            } else {
                anyhow::bail!(
                    "unknown kernel {:?} (TERN_KERNEL takes one of: {})",
                    crate::untrusted::quoted(n),
                    KNOWN.join(", ")
                )
            }
        }
        None => Ok(*all.last().expect("scalar always available")),
    }
}

/// Every kernel variant this CPU can run, and once more with the other
/// [`StreamPlan`] where a variant comes with both ([`all_variants`] has
/// only the plan the CPU is given): what the property tests check
/// against the scalar reference.
pub fn test_variants() -> Vec<&'static Kernel> {
    let v = all_variants();
    #[cfg(target_arch = "x86_64")]
    let v = {
        let mut v = v;
        v.extend(avx2::other_plan());
        v.extend(avx512::other_plan());
        v
    };
    v
}

/// `TERN_STREAMS`: the [`StreamPlan`] every kernel takes (`wide` or
/// `narrow`; unset or empty: the CPU's, [`StreamPlan::for_this_cpu`]).
/// For measuring one against the other.
///
/// # Errors
/// Any other value.
pub fn streams_override() -> anyhow::Result<Option<StreamPlan>> {
    match std::env::var("TERN_STREAMS") {
        Err(_) => Ok(None),
        Ok(v) => match v.trim() {
            "" => Ok(None),
            "wide" => Ok(Some(StreamPlan::WIDE)),
            "narrow" => Ok(Some(StreamPlan::NARROW)),
            other => anyhow::bail!(
                "TERN_STREAMS takes wide or narrow, not {}",
                crate::untrusted::quoted(other)
            ),
        },
    }
}

static ACTIVE: OnceLock<&'static Kernel> = OnceLock::new();

/// The process-wide kernel, chosen once from `TERN_KERNEL` or the CPU.
pub fn active() -> anyhow::Result<&'static Kernel> {
    if let Some(k) = ACTIVE.get() {
        return Ok(*k);
    }
    streams_override()?;
    let env = std::env::var("TERN_KERNEL").ok();
    let k = select(env.as_deref().map(str::trim).filter(|s| !s.is_empty()))?;
    Ok(*ACTIVE.get_or_init(|| k))
}

/// Physical cores (hyper-threads of one core counted once): from sysfs on
/// Linux, from GetLogicalProcessorInformation (through `num_cpus`) on
/// Windows; falls back to the logical CPU count where the topology cannot be
/// read.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    #[cfg(windows)]
    {
        let n = num_cpus::get_physical();
        if n > 0 {
            return n.min(logical);
        }
    }
    #[cfg(target_os = "linux")]
    {
        let mut seen = std::collections::HashSet::new();
        for cpu in 0..logical.max(1) * 4 {
            let base = format!("/sys/devices/system/cpu/cpu{}/topology", cpu);
            let read = |f: &str| std::fs::read_to_string(format!("{}/{}", base, f)).ok();
            match (read("physical_package_id"), read("core_id")) {
                (Some(p), Some(c)) => {
                    seen.insert((p.trim().to_string(), c.trim().to_string()));
                }
                _ => continue,
            }
        }
        if !seen.is_empty() {
            // A cgroup or affinity mask may allow fewer CPUs than exist.
            return seen.len().min(logical);
        }
    }
    logical
}

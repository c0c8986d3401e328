//! Compute kernels behind one trait, chosen at run time from the CPU's
//! features (`TERN_KERNEL=scalar|avx2|avx512|neon` forces one).
//!
//! `scalar` is the reference. Every SIMD implementation returns
//! bit-identical integers for the ternary products (tests/kernels.rs checks
//! it over random shapes); float results (head, attention) may differ in
//! the last bits because the lanes sum in a different order, but each
//! kernel's float results do not depend on the thread count or on how many
//! tokens are in the batch.
//!
//! Ternary weights arrive in the canonical I2_S block layout per row (see
//! `quant::i2s`): a row of K values is K/128 blocks of 32 bytes, value `j`
//! of a block at byte `j % 32`, bits `6 - 2 (j / 32)`, code = T + 1. At load
//! they are repacked into [`Packed`]: rows interleaved by four so that one
//! 128-byte run holds the same block of four rows, which every kernel reads
//! as one sequential stream.
//!
//! A Q8_0 or Q6_K output head stays in its GGUF blocks (read in place from
//! the memory map). The normed hidden state is quantized per token the way
//! ggml quantizes the other operand of its dot products ([`BlockActs`]:
//! Q8_0 blocks, or Q8_K blocks with sums of 16), the products are integer
//! per block (bit-identical across kernels) and one float multiply-add per
//! block applies both scales. Q6_K heads sum the blocks in the scalar
//! order on every kernel (bit-identical results); Q8_0 heads keep one
//! float accumulator per lane (agreeing with scalar to rounding).

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod matmul;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod ops;
pub mod scalar;

use half::f16;
use std::sync::OnceLock;

/// Values per I2_S block.
pub const QK: usize = 128;
/// Rows interleaved in one [`Packed`] group.
pub const GROUP: usize = 4;
/// Bytes of one block of one row.
pub const BLOCK_BYTES: usize = 32;
/// Bytes of one block of a whole group.
pub const GROUP_BLOCK_BYTES: usize = GROUP * BLOCK_BYTES;

pub trait Kernel: Send + Sync {
    /// The name `TERN_KERNEL` selects it by.
    fn name(&self) -> &'static str;

    /// The name with the optional extension in use (`neon+dotprod`, `avx512vnni`).
    fn variant(&self) -> &'static str {
        self.name()
    }

    /// Ternary products for the row groups `g0..g1` of `w` against `n`
    /// int8 activation rows laid out back to back in `xs` (`n · w.cols()`
    /// values; `sums[t]` = Σ of row t, `n = sums.len()`).
    /// `out[t · ld + r]` = Σ_k T[4·g0 + r][k] · xs[t][k] with
    /// `ld = 4 · (g1 - g0)`; padding rows past `w.rows()` come out as 0.
    fn i2s_gemm(&self, w: &Packed, g0: usize, g1: usize, xs: &[i8], sums: &[i32], out: &mut [i32]);

    /// Float rows `v0..v1` of `w` (row length `d`, f16) against `n` f32
    /// rows `xs`: `out[t · (v1 - v0) + (v - v0)] = w_v · xs_t`.
    #[allow(clippy::too_many_arguments)]
    fn f16_gemm(
        &self,
        w: &[f16],
        d: usize,
        v0: usize,
        v1: usize,
        xs: &[f32],
        n: usize,
        out: &mut [f32],
    ) {
        scalar::f16_gemm(w, d, v0, v1, xs, n, out)
    }

    /// As [`Kernel::f16_gemm`] for f32 weights.
    #[allow(clippy::too_many_arguments)]
    fn f32_gemm(
        &self,
        w: &[f32],
        d: usize,
        v0: usize,
        v1: usize,
        xs: &[f32],
        n: usize,
        out: &mut [f32],
    ) {
        scalar::f32_gemm(w, d, v0, v1, xs, n, out)
    }

    /// Integer dots of one Q8_0 head row `w` (`k / 32` blocks of 34 bytes)
    /// with Q8_0 activation quants `a` (`k` values, each in -127..=127):
    /// `out[b] = Σ_{i<32} w_q[32b + i] · a[32b + i]`. Exact, so equal across
    /// kernels.
    fn q8_0_block_dots(&self, w: &[u8], a: &[i8], out: &mut [i32]) {
        scalar::q8_0_block_dots(w, a, out)
    }

    /// Integer dots of one Q6_K head row `w` (`k / 256` blocks of 210 bytes)
    /// with Q8_K activation quants `a` (each in -127..=127) and their sums
    /// per 16 (`bsums`): `out[b] = Σ_j scale_j · Σ_{i in sub-block j}
    /// (q_i − 32) · a_i`. Exact, so equal across kernels.
    fn q6_k_block_dots(&self, w: &[u8], a: &[i8], bsums: &[i16], out: &mut [i32]) {
        scalar::q6_k_block_dots(w, a, bsums, out)
    }

    /// Rows `v0..v1` of a Q8_0 head (row length `x.k`, rows back to back in
    /// `w`) against the `x.n` activation rows of `x` (Q8_0 blocks):
    /// `out[t · (v1 - v0) + (v - v0)] = Σ_b d_w[v][b] · d_x[t][b] · dot_b`.
    /// The integer block dots are exact; how the float terms are summed is
    /// the kernel's, fixed per kernel (independent of `v0`, `v1`, `x.n`).
    fn q8_0_gemm(&self, w: &[u8], v0: usize, v1: usize, x: &BlockActs, out: &mut [f32]) {
        scalar::q8_0_gemm(w, v0, v1, x, out)
    }

    /// As [`Kernel::q8_0_gemm`] for a Q6_K head and Q8_K activations.
    fn q6_k_gemm(&self, w: &[u8], v0: usize, v1: usize, x: &BlockActs, out: &mut [f32]) {
        scalar::q6_k_gemm(w, v0, v1, x, out)
    }

    /// Per-token activation quantization (docs §2): `a = 127 / max(|x|, 1e-5)`,
    /// `q = clamp(round_half_even(x·a), -128, 127)`. Returns (a, Σq).
    /// Bit-identical across kernels.
    fn quantize_act(&self, x: &[f32], q: &mut [i8]) -> (f32, i32) {
        scalar::quantize_act(x, q)
    }

    fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        scalar::dot_f32(a, b)
    }

    /// Dot of f16 values with f32 values.
    fn dot_f16(&self, a: &[f16], b: &[f32]) -> f32 {
        scalar::dot_f16(a, b)
    }

    /// `y += p · x` (f16 `x`).
    fn axpy_f16(&self, p: f32, x: &[f16], y: &mut [f32]) {
        scalar::axpy_f16(p, x, y)
    }

    /// `y += p · x`.
    fn axpy_f32(&self, p: f32, x: &[f32], y: &mut [f32]) {
        scalar::axpy_f32(p, x, y)
    }

    /// Attention scores of one head: `scores[t] = scale · (K_t · q)` for
    /// `t < scores.len()`, `K_t` = `q.len()` values at `t·stride + off` of `k`.
    /// Each score equals `scale · dot` of the same kernel's `dot_f16`/`dot_f32`.
    fn attn_scores(
        &self,
        k: ops::Kv,
        stride: usize,
        off: usize,
        q: &[f32],
        scale: f32,
        scores: &mut [f32],
    ) {
        ops::check_rows(k, stride, off, q.len(), scores.len());
        for (t, s) in scores.iter_mut().enumerate() {
            let at = t * stride + off;
            *s = match k {
                ops::Kv::F16(k) => self.dot_f16(&k[at..at + q.len()], q),
                ops::Kv::F32(k) => self.dot_f32(&k[at..at + q.len()], q),
            } * scale;
        }
    }

    /// Weighted sum of one head's values: `out = Σ_t p[t] · V_t`, summed in
    /// position order as repeated `axpy` would.
    fn attn_values(&self, v: ops::Kv, stride: usize, off: usize, p: &[f32], out: &mut [f32]) {
        ops::check_rows(v, stride, off, out.len(), p.len());
        out.fill(0.0);
        for (t, &pt) in p.iter().enumerate() {
            let at = t * stride + off;
            match v {
                ops::Kv::F16(v) => self.axpy_f16(pt, &v[at..at + out.len()], out),
                ops::Kv::F32(v) => self.axpy_f32(pt, &v[at..at + out.len()], out),
            }
        }
    }
}

/// Ternary weights repacked for the kernels.
///
/// Rows are padded to a multiple of four and cut into groups of four; group
/// `g` is `K/128` runs of 128 bytes, run `b` holding block `b` of rows
/// `4g, 4g+1, 4g+2, 4g+3` (32 canonical bytes each). Padding rows hold code
/// 1 (weight 0). Large matrices live in a 2 MiB-aligned anonymous mapping
/// that asks the kernel for huge pages (fewer TLB misses while streaming).
pub struct Packed {
    buf: Buf,
    rows: usize,
    cols: usize,
}

enum Buf {
    /// An anonymous mapping and the offset of the data in it.
    Map(memmap2::MmapMut, usize, usize),
    Vec(Vec<u8>),
}

/// Transparent huge page size on x86-64 and most aarch64 kernels.
const HUGE: usize = 2 << 20;

impl Buf {
    /// A zeroed buffer of `len` bytes. From 2 MiB up it is an anonymous
    /// mapping advised for huge pages with the data starting on a 2 MiB
    /// boundary, so every whole 2 MiB of it can be one TLB entry (the
    /// partial tail uses small pages; nothing is allocated for the unused
    /// head). Falls back to the heap.
    fn zeroed(len: usize) -> Buf {
        if len >= HUGE {
            if let Ok(m) = memmap2::MmapMut::map_anon(len + HUGE) {
                #[cfg(target_os = "linux")]
                let _ = m.advise(memmap2::Advice::HugePage);
                let off = (m.as_ptr() as usize).next_multiple_of(HUGE) - m.as_ptr() as usize;
                return Buf::Map(m, off, len);
            }
        }
        Buf::Vec(vec![0u8; len])
    }
    fn bytes(&self) -> &[u8] {
        match self {
            Buf::Map(m, off, len) => &m[*off..*off + *len],
            Buf::Vec(v) => v,
        }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Buf::Map(m, off, len) => &mut m[*off..*off + *len],
            Buf::Vec(v) => v,
        }
    }
}

impl Packed {
    /// Repack `rows × cols` ternary weights given as canonical I2_S bytes
    /// (`rows · cols / 4` bytes, no scale tail; `cols` a multiple of 128).
    pub fn from_i2s(canonical: &[u8], rows: usize, cols: usize) -> anyhow::Result<Packed> {
        if cols == 0 || !cols.is_multiple_of(QK) {
            anyhow::bail!(
                "ternary rows of {} values are not a multiple of {}",
                cols,
                QK
            );
        }
        if canonical.len() != rows * cols / 4 {
            anyhow::bail!(
                "{} bytes of I2_S data for a {}×{} matrix (want {})",
                canonical.len(),
                rows,
                cols,
                rows * cols / 4
            );
        }
        let groups = rows.div_ceil(GROUP);
        let nb = cols / QK;
        let rb = cols / 4;
        let mut buf = Buf::zeroed(groups * nb * GROUP_BLOCK_BYTES);
        let dst = buf.bytes_mut();
        for (g, gd) in dst.chunks_exact_mut(nb * GROUP_BLOCK_BYTES).enumerate() {
            for r in 0..GROUP {
                let m = g * GROUP + r;
                for b in 0..nb {
                    let d = &mut gd[b * GROUP_BLOCK_BYTES + r * BLOCK_BYTES..][..BLOCK_BYTES];
                    if m < rows {
                        d.copy_from_slice(&canonical[m * rb + b * BLOCK_BYTES..][..BLOCK_BYTES]);
                    } else {
                        d.fill(0x55);
                    }
                }
            }
        }
        Ok(Packed { buf, rows, cols })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Row groups (rows / 4, rounded up).
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }
    /// Blocks of 128 values per row.
    pub fn blocks(&self) -> usize {
        self.cols / QK
    }
    /// The packed bytes of groups `g0..g1`.
    pub fn group_bytes(&self, g0: usize, g1: usize) -> &[u8] {
        let s = self.blocks() * GROUP_BLOCK_BYTES;
        &self.buf.bytes()[g0 * s..g1 * s]
    }
    /// Row `m` back in canonical I2_S layout (for tests and tools).
    pub fn canonical_row(&self, m: usize) -> Vec<u8> {
        let nb = self.blocks();
        let g = self.group_bytes(m / GROUP, m / GROUP + 1);
        let r = m % GROUP;
        (0..nb)
            .flat_map(|b| &g[b * GROUP_BLOCK_BYTES + r * BLOCK_BYTES..][..BLOCK_BYTES])
            .copied()
            .collect()
    }
}

impl std::ops::Deref for Packed {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.bytes()
    }
}

/// Check the arguments of [`Kernel::i2s_gemm`]; every implementation calls
/// this first, so the SIMD code can rely on the sizes.
pub(crate) fn check_gemm(w: &Packed, g0: usize, g1: usize, xs: &[i8], sums: &[i32], out: &[i32]) {
    let n = sums.len();
    assert!(
        g0 <= g1 && g1 <= w.groups(),
        "row groups {}..{} of {}",
        g0,
        g1,
        w.groups()
    );
    assert_eq!(xs.len(), n * w.cols(), "activation size");
    assert!(out.len() >= n * GROUP * (g1 - g0), "output size");
}

/// Check the arguments of the float GEMMs.
pub(crate) fn check_float_gemm(
    wlen: usize,
    d: usize,
    v0: usize,
    v1: usize,
    xs: &[f32],
    n: usize,
    out: &[f32],
) {
    assert!(
        v0 <= v1 && v1 * d <= wlen,
        "rows {}..{} of {}",
        v0,
        v1,
        wlen / d.max(1)
    );
    assert!(xs.len() >= n * d, "activation size");
    assert!(out.len() >= n * (v1 - v0), "output size");
}

/// The block format of a quantized output head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantHead {
    /// Q8_0 weights, Q8_0 activations (blocks of 32).
    Q8_0,
    /// Q6_K weights, Q8_K activations (blocks of 256).
    Q6K,
}

impl QuantHead {
    /// Values per weight (and activation) block.
    pub fn block(self) -> usize {
        match self {
            QuantHead::Q8_0 => crate::quant::q8_0::QK8_0,
            QuantHead::Q6K => crate::quant::q6_k::QK_K,
        }
    }
    /// Bytes per weight block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantHead::Q8_0 => crate::quant::q8_0::BLOCK_BYTES,
            QuantHead::Q6K => crate::quant::q6_k::BLOCK_BYTES,
        }
    }
    /// Bytes of one weight row of `k` values.
    pub fn row_bytes(self, k: usize) -> usize {
        k / self.block() * self.block_bytes()
    }
}

/// Activation rows quantized per block for a quantized head, the way ggml
/// quantizes the other operand of its dot products: Q8_0 blocks for a Q8_0
/// head (`quant::q8_0::quantize_acts`), Q8_K blocks for a Q6_K head
/// (`quant::q6_k::quantize_q8_k`, with the sums of each 16 quants).
#[derive(Debug, Clone)]
pub struct BlockActs {
    pub kind: QuantHead,
    /// Row length.
    pub k: usize,
    /// Rows.
    pub n: usize,
    /// `n · k` quants, each in -127..=127.
    pub qs: Vec<i8>,
    /// `n · k / block` block scales.
    pub d: Vec<f32>,
    /// `n · k / 16` sums of 16 quants (Q8_K only; empty for Q8_0).
    pub bsums: Vec<i16>,
}

impl BlockActs {
    /// Quantize `n` rows of `k` values (`k` a multiple of the block).
    pub fn quantize(kind: QuantHead, x: &[f32], k: usize) -> BlockActs {
        assert!(
            k > 0 && k.is_multiple_of(kind.block()) && x.len().is_multiple_of(k),
            "activations are not whole rows of whole blocks"
        );
        let n = x.len() / k;
        let mut qs = vec![0i8; x.len()];
        let mut d = vec![0f32; x.len() / kind.block()];
        let mut bsums = Vec::new();
        match kind {
            QuantHead::Q8_0 => crate::quant::q8_0::quantize_acts(x, &mut qs, &mut d),
            QuantHead::Q6K => {
                bsums = vec![0i16; x.len() / 16];
                crate::quant::q6_k::quantize_q8_k(x, &mut qs, &mut d, &mut bsums)
            }
        }
        BlockActs {
            kind,
            k,
            n,
            qs,
            d,
            bsums,
        }
    }
    /// The quants of row `t`.
    pub fn row(&self, t: usize) -> &[i8] {
        &self.qs[t * self.k..(t + 1) * self.k]
    }
    /// The block scales of row `t`.
    pub fn scales(&self, t: usize) -> &[f32] {
        let nb = self.k / self.kind.block();
        &self.d[t * nb..(t + 1) * nb]
    }
    /// The sums of 16 of row `t` (Q8_K).
    pub fn sums16(&self, t: usize) -> &[i16] {
        &self.bsums[t * self.k / 16..(t + 1) * self.k / 16]
    }
}

/// Check the arguments of the quantized head GEMMs; every implementation
/// calls this first, so the SIMD code can rely on the sizes.
pub(crate) fn check_quant_gemm(
    kind: QuantHead,
    w: &[u8],
    v0: usize,
    v1: usize,
    x: &BlockActs,
    out: &[f32],
) {
    assert_eq!(x.kind, kind, "activation blocks for another head type");
    let nb = x.k / kind.block();
    assert!(
        x.k > 0 && x.k.is_multiple_of(kind.block()),
        "row length {}",
        x.k
    );
    assert_eq!(x.qs.len(), x.n * x.k, "activation size");
    assert_eq!(x.d.len(), x.n * nb, "activation scales");
    if kind == QuantHead::Q6K {
        assert_eq!(x.bsums.len(), x.n * x.k / 16, "activation sums");
    }
    let rb = kind.row_bytes(x.k);
    assert!(
        v0 <= v1 && v1 * rb <= w.len(),
        "rows {}..{} of {}",
        v0,
        v1,
        w.len() / rb
    );
    assert!(out.len() >= x.n * (v1 - v0), "output size");
}

/// Check the arguments of the block-dot functions.
pub(crate) fn check_block_dots(kind: QuantHead, w: &[u8], a: &[i8], out: &[i32]) {
    let nb = a.len() / kind.block();
    assert!(a.len().is_multiple_of(kind.block()), "activation size");
    assert_eq!(w.len(), nb * kind.block_bytes(), "weight row size");
    assert_eq!(out.len(), nb, "output size");
}

/// Every kernel this CPU can run, best last.
pub fn available() -> Vec<&'static dyn Kernel> {
    let mut v: Vec<&'static dyn Kernel> = vec![&scalar::Scalar];
    #[cfg(target_arch = "x86_64")]
    {
        if avx2::Avx2::detect() {
            v.push(&avx2::Avx2);
        }
        if let Some(k) = avx512::Avx512::get() {
            v.push(k);
        }
    }
    #[cfg(target_arch = "aarch64")]
    v.push(neon::Neon::get());
    v
}

/// Every kernel variant this CPU can run, including the lesser ones that
/// [`available`] hides (AVX-512 without VNNI, NEON without dotprod); the
/// property tests check each of them against the scalar reference.
pub fn all_variants() -> Vec<&'static dyn Kernel> {
    let mut v: Vec<&'static dyn Kernel> = vec![&scalar::Scalar];
    #[cfg(target_arch = "x86_64")]
    {
        if avx2::Avx2::detect() {
            v.push(&avx2::Avx2);
        }
        for k in avx512::Avx512::variants() {
            v.push(k);
        }
    }
    #[cfg(target_arch = "aarch64")]
    for k in neon::Neon::variants() {
        v.push(k);
    }
    v
}

/// The kernel called `name` (error if this CPU cannot run it), else the
/// best the CPU supports.
pub fn select(name: Option<&str>) -> anyhow::Result<&'static dyn Kernel> {
    let all = available();
    let names = || all.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ");
    match name {
        Some(n) => {
            let known = ["scalar", "avx2", "avx512", "neon"];
            if let Some(k) = all.iter().find(|k| k.name() == n) {
                Ok(*k)
            } else if known.contains(&n) {
                anyhow::bail!(
                    "kernel {:?} is not available on this CPU (have: {})",
                    n,
                    names()
                )
            } else {
                anyhow::bail!(
                    "unknown kernel {:?} (TERN_KERNEL takes one of: {})",
                    n,
                    known.join(", ")
                )
            }
        }
        None => Ok(*all.last().expect("scalar always available")),
    }
}

static ACTIVE: OnceLock<&'static dyn Kernel> = OnceLock::new();

/// The process-wide kernel, chosen once from `TERN_KERNEL` or the CPU.
pub fn active() -> anyhow::Result<&'static dyn Kernel> {
    if let Some(k) = ACTIVE.get() {
        return Ok(*k);
    }
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

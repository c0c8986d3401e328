//! Hugging Face ternary checkpoint → GGUF, for every architecture of
//! [`crate::arch::ARCHS`].
//!
//! Every projection is classified per tensor (docs §3, §7): continuous master
//! weights get the absmean rule, already-ternary weights keep their codes
//! and exact scale, offline codes (packed uint8, or unpacked float) with a
//! `weight_scale` get `W = T / weight_scale` (`BitLinear`) or
//! `W = T × weight_scale` (`AutoBitLinear` offline); `AutoBitLinear` online
//! always takes absmean. Q and K rows are permuted for an architecture whose
//! RoPE pairs adjacent elements. Nothing depends on file or folder names.

pub mod ternary;

use crate::arch::RopeLayout;
use crate::gguf::{write_gguf, write_gguf_to, TensorPlan, Value, ValueType};
use crate::hf::checkpoint::RawTensor;
use crate::hf::config::{HfConfig, LinearClass, RopeScaling};
use crate::hf::vocab::TokenizerFiles;
use crate::hf::{Checkpoint, HfVocab};
use crate::quant::{i2s, q6_k, q8_0, tq, GgmlType};
use crate::untrusted::quoted;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::Dtype;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
pub use ternary::{
    absmean, float_codes, permute_rope_rows, ternarize_float, unpack_packed, ScaleRule, Ternarized,
    TernaryKind,
};

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub input: PathBuf,
    pub outfile: Option<PathBuf>,
    pub outtype: GgmlType,
    pub embd_type: GgmlType,
    pub force: bool,
    /// Suppress the per-tensor report (tests).
    pub quiet: bool,
}

/// What was written, for the summary line and for tests.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub outfile: PathBuf,
    pub arch: String,
    pub tensors: usize,
    pub continuous: usize,
    pub ternary: usize,
    pub packed: usize,
    pub fallbacks: Vec<String>,
    pub bytes: u64,
}

/// Projection types `convert` writes, by their names.
pub const OUTTYPES: &[GgmlType] = &[
    GgmlType::I2S,
    GgmlType::TQ2_0,
    GgmlType::TQ1_0,
    GgmlType::F16,
    GgmlType::F32,
];
/// Token embedding / output head types `convert` writes.
pub const EMBD_TYPES: &[GgmlType] = &[GgmlType::F16, GgmlType::F32, GgmlType::Q8_0, GgmlType::Q6K];

fn parse_type(name: &str, what: &str, allowed: &[GgmlType]) -> Result<GgmlType> {
    GgmlType::from_name(name)
        .filter(|t| allowed.contains(t))
        .ok_or_else(|| {
            let names: Vec<String> = allowed.iter().map(|t| t.name().to_lowercase()).collect();
            anyhow!("unknown {} {:?} ({})", what, name, names.join(", "))
        })
}

/// The projection type called `name` (`i2_s`, `tq2_0`, `tq1_0`, `f16`, `f32`).
pub fn parse_outtype(name: &str) -> Result<GgmlType> {
    parse_type(name, "outtype", OUTTYPES)
}

/// The embedding / head type called `name` (`f16`, `f32`, `q8_0`, `q6_k`).
pub fn parse_embd_type(name: &str) -> Result<GgmlType> {
    parse_type(name, "embedding type", EMBD_TYPES)
}

/// An error that carries an I/O error kind (so callers can tell a missing
/// folder or an existing output file from other failures) with its message.
fn io_error(kind: std::io::ErrorKind, msg: String) -> anyhow::Error {
    anyhow::Error::new(std::io::Error::new(kind, msg))
}

/// GGUF `general.file_type` for each output type (llama.cpp's llama_ftype).
pub fn file_type(outtype: GgmlType) -> u32 {
    match outtype {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q8_0 => 7,
        GgmlType::Q4K => 15,
        GgmlType::Q6K => 18,
        GgmlType::BF16 => 32,
        GgmlType::TQ1_0 => 36,
        GgmlType::TQ2_0 => 37,
        GgmlType::I2S => 40,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Embedding,
    Output,
    Norm,
    Projection,
    /// `rope_freqs.weight`: computed from `rope_scaling` (llama3), not read.
    RopeFreqs,
}

struct Planned {
    plan: TensorPlan,
    hf_name: String,
    role: Role,
    /// HF shape [rows, cols] the tensor must have once unpacked.
    rows: usize,
    cols: usize,
    /// Heads whose rows get the RoPE permutation (Q, K of an adjacent-pair arch).
    permute_heads: Option<usize>,
}

/// GGUF name of the per-linear input RMSNorm (`use_rms_norm`) of projection
/// `gg` (e.g. `attn_q`) in block `l`. llama.cpp has no such tensor; tern
/// names it after the projection it feeds.
pub fn input_norm_name(l: usize, gg: &str) -> String {
    format!("blk.{}.{}_input_norm.weight", l, gg)
}

/// How the converter turns stored projections into ternary codes and scale.
#[derive(Debug, Clone, Copy)]
pub struct Recipe {
    /// The meaning of a stored `weight_scale`.
    pub rule: ScaleRule,
    /// Absmean even for already-ternary floats (AutoBitLinear online).
    pub absmean_always: bool,
}

impl Recipe {
    pub fn of(cfg: &HfConfig) -> Recipe {
        let class = cfg.quant.as_ref().map(|q| q.linear_class);
        Recipe {
            rule: if class == Some(LinearClass::AutoOffline) {
                ScaleRule::Multiply
            } else {
                ScaleRule::Divide
            },
            absmean_always: class == Some(LinearClass::AutoOnline),
        }
    }
}

const PROJ: &[(&str, &str)] = &[
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

fn pick(ck: &Checkpoint, candidates: &[&str]) -> Result<String> {
    for c in candidates {
        if ck.contains(c) {
            return Ok(c.to_string());
        }
    }
    bail!("checkpoint has no tensor {}", candidates.join(" or "))
}

fn plan(
    cfg: &HfConfig,
    ck: &Checkpoint,
    outtype: GgmlType,
    embd_type: GgmlType,
) -> Result<(Vec<Planned>, Vec<String>)> {
    let h = cfg.hidden;
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    check_layer_count(cfg, ck)?;
    let mut out = Vec::new();
    let mut fallbacks = Vec::new();
    let emb = pick(ck, &["model.embed_tokens.weight"])?;
    let vocab_rows = ck.require(&emb)?.shape.first().copied().unwrap_or(0);
    if vocab_rows != cfg.vocab {
        bail!(
            "model.embed_tokens.weight has {} rows but config.json says vocab_size {}",
            vocab_rows,
            cfg.vocab
        );
    }
    let norm = |hf: String, gg: String, n: usize| Planned {
        plan: TensorPlan {
            name: gg,
            dims: vec![n as u64],
            ty: GgmlType::F32,
        },
        hf_name: hf,
        role: Role::Norm,
        rows: 1,
        cols: n,
        permute_heads: None,
    };
    // Modules that transformers would leave as float nn.Linear: tern runs every
    // projection as a BitLinear and the head as a float matrix, so anything
    // else is refused rather than silently given other semantics.
    // A list without lm_head makes the head a BitLinear too (written in the
    // projection type, run with int8 activations).
    let head_bitlinear = match &cfg.quant {
        Some(q) if ck.contains("lm_head.weight") && !q.keeps_float("lm_head") => {
            if cfg.tied || q.use_rms_norm {
                bail!("quantization_config.modules_to_not_convert does not list lm_head, so transformers runs the output head as a BitLinear; tern runs such a head only untied and without use_rms_norm");
            }
            true
        }
        _ => false,
    };
    out.push(Planned {
        plan: TensorPlan {
            name: "token_embd.weight".into(),
            dims: vec![h as u64, cfg.vocab as u64],
            ty: embd_tensor_type("token_embd.weight", h, embd_type, &mut fallbacks),
        },
        hf_name: emb,
        role: Role::Embedding,
        rows: cfg.vocab,
        cols: h,
        permute_heads: None,
    });
    out.push(norm(
        pick(ck, &["model.norm.weight"])?,
        "output_norm.weight".into(),
        h,
    ));
    if ck.contains("lm_head.weight") && !cfg.tied {
        let (ty, role) = if head_bitlinear {
            if outtype == GgmlType::I2S && !h.is_multiple_of(i2s::BLOCK) {
                bail!(
                    "lm_head.weight has {} columns: I2_S needs a multiple of 128",
                    h
                );
            }
            (
                projection_type(outtype, h, "output.weight", &mut fallbacks),
                Role::Projection,
            )
        } else {
            (
                embd_tensor_type("output.weight", h, embd_type, &mut fallbacks),
                Role::Output,
            )
        };
        out.push(Planned {
            plan: TensorPlan {
                name: "output.weight".into(),
                dims: vec![h as u64, cfg.vocab as u64],
                ty,
            },
            hf_name: "lm_head.weight".into(),
            role,
            rows: cfg.vocab,
            cols: h,
            permute_heads: None,
        });
    }
    if let RopeScaling::Llama3 { .. } = cfg.rope_scaling {
        let n = cfg.head_dim / 2;
        out.push(Planned {
            plan: TensorPlan {
                name: "rope_freqs.weight".into(),
                dims: vec![n as u64],
                ty: GgmlType::F32,
            },
            hf_name: String::new(),
            role: Role::RopeFreqs,
            rows: 1,
            cols: n,
            permute_heads: None,
        });
    }
    for l in 0..cfg.layers {
        let p = format!("model.layers.{}.", l);
        let b = format!("blk.{}.", l);
        out.push(norm(
            pick(ck, &[&format!("{p}input_layernorm.weight")])?,
            format!("{b}attn_norm.weight"),
            h,
        ));
        out.push(norm(
            pick(ck, &[&format!("{p}post_attention_layernorm.weight")])?,
            format!("{b}ffn_norm.weight"),
            h,
        ));
        if let Some(sub) = &cfg.arch.sub_norms {
            for (names, gg, n) in [
                (sub.attn, "attn_sub_norm", qd),
                (sub.ffn, "ffn_sub_norm", cfg.intermediate),
            ] {
                let cands: Vec<String> = names.iter().map(|m| format!("{p}{m}.weight")).collect();
                let cands: Vec<&str> = cands.iter().map(String::as_str).collect();
                out.push(norm(pick(ck, &cands)?, format!("{b}{gg}.weight"), n));
            }
        }
        for (hf, gg) in PROJ {
            let (rows, cols) = match *gg {
                "attn_q" => (qd, h),
                "attn_k" | "attn_v" => (kvd, h),
                "attn_output" => (h, qd),
                "ffn_gate" | "ffn_up" => (cfg.intermediate, h),
                _ => (h, cfg.intermediate),
            };
            let name = format!("{b}{gg}.weight");
            let module = format!("{p}{hf}");
            if let Some(q) = &cfg.quant {
                if q.keeps_float(&module) {
                    bail!("quantization_config.modules_to_not_convert keeps {} a float nn.Linear; tern runs every projection as a BitLinear", module);
                }
                if q.use_rms_norm {
                    out.push(norm(
                        format!("{module}.rms_norm.weight"),
                        input_norm_name(l, gg),
                        cols,
                    ));
                }
            }
            let permute_heads = match (cfg.arch.rope, *gg) {
                (RopeLayout::Adjacent, "attn_q") => Some(cfg.heads),
                (RopeLayout::Adjacent, "attn_k") => Some(cfg.kv_heads),
                _ => None,
            };
            if outtype == GgmlType::I2S && !cols.is_multiple_of(i2s::BLOCK) {
                bail!(
                    "{} has {} columns: I2_S needs a multiple of 128 (choose --outtype f16, f32, tq2_0 or tq1_0)",
                    name,
                    cols
                );
            }
            let ty = projection_type(outtype, cols, &name, &mut fallbacks);
            out.push(Planned {
                plan: TensorPlan {
                    name,
                    dims: vec![cols as u64, rows as u64],
                    ty,
                },
                hf_name: format!("{p}{hf}.weight"),
                role: Role::Projection,
                rows,
                cols,
                permute_heads,
            });
        }
    }
    // Shapes against the config, before anything is written.
    for p in out.iter().filter(|p| p.role != Role::RopeFreqs) {
        let t = ck.require(&p.hf_name)?;
        let expect: Vec<usize> = match (p.role, t.dtype) {
            (Role::Norm, _) => vec![p.cols],
            (Role::Projection, Dtype::U8) => vec![p.rows / 4, p.cols],
            _ => vec![p.rows, p.cols],
        };
        if t.shape != expect.as_slice() {
            bail!(
                "tensor {} has shape {:?} but config.json implies {:?}",
                p.hf_name,
                t.shape,
                expect
            );
        }
        if t.dtype == Dtype::U8 {
            if p.role != Role::Projection {
                bail!(
                    "tensor {} is uint8 but only projections may be packed",
                    p.hf_name
                );
            }
            if p.rows % 4 != 0 {
                bail!(
                    "packed tensor {} has {} rows, not a multiple of 4",
                    p.hf_name,
                    p.rows
                );
            }
            let sname = scale_name(&p.hf_name);
            if !ck.contains(&sname) {
                bail!(
                    "packed tensor {} has no {} (the scale of an offline-packed checkpoint)",
                    p.hf_name,
                    sname
                );
            }
        } else if !matches!(t.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) {
            bail!(
                "tensor {} has dtype {:?}; tern reads bf16, f16, f32 and packed uint8",
                p.hf_name,
                t.dtype
            );
        }
    }
    Ok((out, fallbacks))
}

/// The type a projection of rows of `cols` values is written in: `outtype`,
/// or F16 where a ternary block type cannot hold the rows (llama.cpp's
/// converter falls back the same way).
fn projection_type(
    outtype: GgmlType,
    cols: usize,
    name: &str,
    fallbacks: &mut Vec<String>,
) -> GgmlType {
    if outtype.info().ternary && !cols.is_multiple_of(outtype.info().block) {
        fallbacks.push(format!(
            "{} ({} columns is not a multiple of {}): F16",
            name,
            cols,
            outtype.info().block
        ));
        return GgmlType::F16;
    }
    outtype
}

/// `N` of a checkpoint tensor `model.layers.N.…`.
fn hf_layer_index(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// A checkpoint with more layers than `num_hidden_layers` says is refused
/// rather than silently cut short.
fn check_layer_count(cfg: &HfConfig, ck: &Checkpoint) -> Result<()> {
    if let Some(n) = ck.names().filter_map(hf_layer_index).max() {
        if n >= cfg.layers {
            bail!(
                "the checkpoint has layer {} but config.json says num_hidden_layers {}",
                n,
                cfg.layers
            );
        }
    }
    Ok(())
}

/// The type an embedding / output head of rows of `cols` values is written
/// in: `embd_type`, or the fallback llama.cpp's tools take when the rows do
/// not hold whole blocks — Q8_0 → F16 (`convert_hf_to_gguf.py` on gguf-py's
/// `QuantError`), Q6_K → Q8_0, or F16 when even that does not fit
/// (llama-quantize's rule for k-quants).
fn embd_tensor_type(
    name: &str,
    cols: usize,
    embd_type: GgmlType,
    fallbacks: &mut Vec<String>,
) -> GgmlType {
    let fits = |t: GgmlType| cols.is_multiple_of(t.info().block);
    if fits(embd_type) {
        return embd_type;
    }
    let ty = if embd_type == GgmlType::Q6K && fits(GgmlType::Q8_0) {
        GgmlType::Q8_0
    } else {
        GgmlType::F16
    };
    fallbacks.push(format!(
        "{} ({} columns is not a multiple of {}, needed by {}): {}",
        name,
        cols,
        embd_type.info().block,
        embd_type.name(),
        ty.name()
    ));
    ty
}

fn scale_name(weight: &str) -> String {
    format!("{}_scale", weight)
}

/// Classify and ternarize one projection (by `recipe`), permuting its rows
/// for adjacent-pair RoPE when `permute_heads` is given.
pub fn ternarize_tensor(
    ck: &Checkpoint,
    hf_name: &str,
    rows: usize,
    cols: usize,
    recipe: Recipe,
    permute_heads: Option<usize>,
) -> Result<Ternarized> {
    let t = ck.require(hf_name)?;
    let sname = scale_name(hf_name);
    let weight_scale = || -> Result<f32> {
        let s = ck.require(&sname)?;
        if s.n_elements() != 1 {
            bail!(
                "{} must hold one value, found {:?}",
                quoted(s.name),
                s.shape
            );
        }
        Ok(s.to_f32()?[0])
    };
    let mut tz = if t.dtype == Dtype::U8 {
        unpack_packed(t.data, rows, cols, weight_scale()?, recipe.rule)
    } else if recipe.absmean_always {
        absmean(&t.to_f32()?)
    } else if ck.contains(&sname) {
        float_codes(&t.to_f32()?, weight_scale()?, recipe.rule)
    } else {
        ternarize_float(&t.to_f32()?)
    }
    .with_context(|| format!("tensor {}", quoted(hf_name)))?;
    if let Some(n_head) = permute_heads {
        tz.codes = permute_rope_rows(&tz.codes, rows, cols, n_head)
            .with_context(|| format!("tensor {}", quoted(hf_name)))?;
    }
    Ok(tz)
}

/// Largest magnitude a value may have to be stored in `ty`: F16 and the
/// formats with f16 block scales (Q8_0, Q6_K, TQ2_0, TQ1_0) overflow to
/// infinity past f16's largest value (Q8_0's scale is max/127, so allow
/// that much more there).
fn max_magnitude(ty: GgmlType) -> f32 {
    let f16_max = half::f16::MAX.to_f32();
    match ty {
        GgmlType::F32 | GgmlType::I2S => f32::MAX,
        GgmlType::Q8_0 => f16_max * 127.0,
        _ => f16_max,
    }
}

/// Every value of a float tensor finite and representable in `ty`.
fn check_values(name: &str, xs: &[f32], ty: GgmlType) -> Result<()> {
    use rayon::prelude::*;
    let max = max_magnitude(ty);
    if let Some(i) = xs
        .par_iter()
        .position_any(|x| !(x.is_finite() && x.abs() <= max))
    {
        bail!(
            "tensor {}: value {} at element {} {}",
            quoted(name),
            xs[i],
            i,
            if xs[i].is_finite() {
                format!("does not fit in {} (choose --embd-type f32)", ty.name())
            } else {
                "is not a finite number".to_string()
            }
        );
    }
    Ok(())
}

/// A projection's scale must survive the output type: finite and positive
/// as the f32 of I2_S, and inside f16's normal range where the type stores
/// f16 (TQ2_0 / TQ1_0 block scales, F16 weights).
fn check_scale(name: &str, scale: f32, ty: GgmlType) -> Result<()> {
    let ok = scale.is_finite()
        && scale > 0.0
        && (matches!(ty, GgmlType::I2S | GgmlType::F32)
            || (scale <= max_magnitude(ty) && scale >= half::f16::MIN_POSITIVE.to_f32()));
    if !ok {
        bail!(
            "{}: scale {:e} cannot be stored in {}{}",
            name,
            scale,
            ty.name(),
            if scale.is_finite() && scale > 0.0 {
                " (it is outside f16's range; choose --outtype i2_s or f32)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn write_f32(w: &mut dyn Write, xs: &[f32]) -> Result<()> {
    let mut buf = Vec::with_capacity(xs.len() * 4);
    for x in xs {
        buf.extend_from_slice(&x.to_le_bytes());
    }
    w.write_all(&buf)?;
    Ok(())
}

fn write_f16(w: &mut dyn Write, xs: &[f32]) -> Result<()> {
    let mut buf = Vec::with_capacity(xs.len() * 2);
    for x in xs {
        buf.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes());
    }
    w.write_all(&buf)?;
    Ok(())
}

/// Quantize `xs` (whole blocks) to Q8_0 or Q6_K, the blocks spread over
/// the rayon pool (each block is quantized on its own, so the bytes do not
/// depend on the split).
fn write_quantized(w: &mut dyn Write, xs: &[f32], ty: GgmlType) -> Result<()> {
    use rayon::prelude::*;
    let info = ty.info();
    // 64 blocks per task: 16 KiB of Q6_K input, 8 KiB of Q8_0.
    let per_task = 64 * info.block;
    let parts: Vec<Vec<u8>> = xs
        .par_chunks(per_task)
        .map(|c| {
            let mut out = Vec::with_capacity(c.len() / info.block * info.block_bytes);
            match ty {
                GgmlType::Q8_0 => q8_0::quantize(c, &mut out),
                _ => q6_k::quantize(c, &mut out),
            }
            out
        })
        .collect();
    for p in parts {
        w.write_all(&p)?;
    }
    Ok(())
}

/// Write a float tensor (embedding, head) in row chunks so memory stays bounded.
fn write_float_tensor(w: &mut dyn Write, t: &RawTensor, ty: GgmlType) -> Result<()> {
    let n = t.n_elements();
    // A multiple of every block size (Q6_K: 256), so chunks hold whole blocks.
    let chunk = 1 << 20;
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let xs = t.to_f32_range(start, len)?;
        check_values(t.name, &xs, ty)?;
        match ty {
            GgmlType::F32 => write_f32(w, &xs)?,
            GgmlType::F16 => write_f16(w, &xs)?,
            GgmlType::Q8_0 | GgmlType::Q6K => write_quantized(w, &xs, ty)?,
            other => bail!(
                "embedding type {} is not supported (f16, f32, q8_0 or q6_k)",
                other.name()
            ),
        }
        start += len;
    }
    Ok(())
}

/// Encode ternary codes and scale in the chosen projection type.
pub fn encode_projection(tz: &Ternarized, ty: GgmlType, out: &mut Vec<u8>) -> Result<()> {
    match ty {
        GgmlType::I2S => i2s::encode(&tz.codes, tz.scale, out),
        GgmlType::TQ2_0 => tq::encode_tq2_0(&tz.codes, tz.scale, out),
        GgmlType::TQ1_0 => tq::encode_tq1_0(&tz.codes, tz.scale, out),
        GgmlType::F32 => {
            for &c in &tz.codes {
                out.extend_from_slice(&(c as f32 * tz.scale).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for &c in &tz.codes {
                out.extend_from_slice(&half::f16::from_f32(c as f32 * tz.scale).to_le_bytes());
            }
        }
        other => bail!("projection type {} is not supported", other.name()),
    }
    Ok(())
}

/// What writing one tensor found (for the report line).
enum Written {
    Norm,
    Float,
    Projection {
        kind: TernaryKind,
        scale: f32,
        zeros: usize,
        n: usize,
    },
}

/// Write the bytes of one planned tensor: checked values (finite, in the
/// range of the output type), projections ternarized and encoded.
fn write_tensor(
    ck: &Checkpoint,
    cfg: &HfConfig,
    recipe: Recipe,
    p: &Planned,
    w: &mut dyn Write,
) -> Result<Written> {
    Ok(match p.role {
        Role::Norm => {
            let xs = ck.require(&p.hf_name)?.to_f32()?;
            check_values(&p.hf_name, &xs, GgmlType::F32)?;
            write_f32(w, &xs)?;
            Written::Norm
        }
        Role::Embedding | Role::Output => {
            write_float_tensor(w, &ck.require(&p.hf_name)?, p.plan.ty)?;
            Written::Float
        }
        Role::RopeFreqs => {
            let f =
                crate::rope::llama3_freq_factors(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling);
            write_f32(w, &f)?;
            Written::Float
        }
        Role::Projection => {
            let tz = ternarize_tensor(ck, &p.hf_name, p.rows, p.cols, recipe, p.permute_heads)?;
            check_scale(&p.hf_name, tz.scale, p.plan.ty)?;
            let mut buf = Vec::new();
            encode_projection(&tz, p.plan.ty, &mut buf)?;
            w.write_all(&buf)?;
            Written::Projection {
                kind: tz.kind,
                scale: tz.scale,
                zeros: tz.zeros,
                n: tz.codes.len(),
            }
        }
    })
}

/// Convert checkpoint parts already in memory (`ck` may be
/// [`Checkpoint::from_bytes`]) into a GGUF image written to `out`, with the
/// same checks as [`convert`] and no report. For tests and fuzzing.
pub fn convert_to_writer(
    cfg: &HfConfig,
    ck: &Checkpoint,
    files: &TokenizerFiles,
    name: &str,
    outtype: GgmlType,
    embd_type: GgmlType,
    out: &mut dyn Write,
) -> Result<()> {
    let (planned, _) = plan(cfg, ck, outtype, embd_type)?;
    let vocab = HfVocab::build(files, cfg, cfg.vocab)?;
    let kv = metadata(cfg, &vocab, name, outtype)?;
    let plans: Vec<TensorPlan> = planned.iter().map(|p| p.plan.clone()).collect();
    let recipe = Recipe::of(cfg);
    write_gguf_to(out, &kv, &plans, |i, w| {
        write_tensor(ck, cfg, recipe, &planned[i], w)?;
        Ok(())
    })
}

/// The default output name, `<dir>-<outtype>.gguf`, with the embedding /
/// head type added when it is not the default F16
/// (`<dir>-i2_s-q6_k.gguf`), so that two conversions of one folder do not
/// collide.
pub fn default_outfile(input: &Path, outtype: GgmlType, embd_type: GgmlType) -> PathBuf {
    let name = input
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let mut file = format!("{}-{}", name, outtype.name().to_ascii_lowercase());
    if embd_type != GgmlType::F16 {
        file.push('-');
        file.push_str(&embd_type.name().to_ascii_lowercase());
    }
    file.push_str(".gguf");
    PathBuf::from(file)
}

/// Where a conversion writes: `outfile`, or the default name in the current
/// directory, or in `outfile` when that is a directory (as
/// `convert_hf_to_gguf.py --outfile DIR` allows).
pub fn output_path(
    input: &Path,
    outfile: Option<&Path>,
    outtype: GgmlType,
    embd_type: GgmlType,
) -> PathBuf {
    let default = || default_outfile(input, outtype, embd_type);
    match outfile {
        Some(o) if o.is_dir() => o.join(default()),
        Some(o) => o.to_path_buf(),
        None => default(),
    }
}

/// A count as the GGUF's `uint32` (llama.cpp's type for these keys); a
/// value that does not fit is an error, never truncated.
fn u32_value(key: &str, x: usize) -> Result<Value> {
    u32::try_from(x)
        .map(Value::U32)
        .map_err(|_| anyhow!("{} = {} does not fit the GGUF's u32", key, x))
}

/// The GGUF metadata of a conversion. Every count is range-checked into
/// the type it is stored as.
pub fn metadata(
    cfg: &HfConfig,
    vocab: &HfVocab,
    name: &str,
    outtype: GgmlType,
) -> Result<Vec<(String, Value)>> {
    let arch = cfg.arch.gguf;
    let a = |k: &str| format!("{}.{}", arch, k);
    let mut kv: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(file_type(outtype))),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    for (k, x) in [
        ("vocab_size", cfg.vocab),
        ("context_length", cfg.context),
        ("embedding_length", cfg.hidden),
        ("block_count", cfg.layers),
        ("feed_forward_length", cfg.intermediate),
        ("rope.dimension_count", cfg.head_dim),
    ] {
        kv.push((a(k), u32_value(&a(k), x)?));
    }
    kv.push((a("rope.freq_base"), Value::F32(cfg.rope_theta)));
    for (k, x) in [
        ("attention.head_count", cfg.heads),
        ("attention.head_count_kv", cfg.kv_heads),
    ] {
        kv.push((a(k), u32_value(&a(k), x)?));
    }
    kv.push((
        a("attention.layer_norm_rms_epsilon"),
        Value::F32(cfg.rms_eps),
    ));
    if cfg.q_dim() != cfg.hidden {
        for k in ["attention.key_length", "attention.value_length"] {
            kv.push((a(k), u32_value(&a(k), cfg.head_dim)?));
        }
    }
    if cfg.arch.writes_activation {
        kv.push((
            a("hidden_activation"),
            Value::String(cfg.activation.name().into()),
        ));
    }
    // llama.cpp's keys; llama3's per-frequency factors go in the
    // `rope_freqs.weight` tensor instead, as llama.cpp's converter writes them.
    match cfg.rope_scaling {
        RopeScaling::None | RopeScaling::Llama3 { .. } => {}
        RopeScaling::Linear { factor } => {
            kv.push((a("rope.scaling.type"), Value::String("linear".into())));
            kv.push((a("rope.scaling.factor"), Value::F32(factor)));
        }
        RopeScaling::Yarn {
            factor,
            original_context,
        } => {
            kv.push((a("rope.scaling.type"), Value::String("yarn".into())));
            kv.push((a("rope.scaling.factor"), Value::F32(factor)));
            kv.push((
                a("rope.scaling.original_context_length"),
                Value::U32(original_context),
            ));
        }
    }
    if let Some(q) = cfg.quant.as_ref().filter(|q| q.use_rms_norm) {
        kv.push((
            a("bitlinear.input_norm_rms_epsilon"),
            Value::F32(q.rms_norm_eps),
        ));
    }
    kv.push((
        "tokenizer.ggml.model".into(),
        Value::String(vocab.model.clone()),
    ));
    if let Some(p) = &vocab.pre {
        kv.push(("tokenizer.ggml.pre".into(), Value::String(p.clone())));
    }
    kv.push((
        "tokenizer.ggml.tokens".into(),
        Value::string_array(vocab.tokens.clone()),
    ));
    if !vocab.scores.is_empty() {
        kv.push((
            "tokenizer.ggml.scores".into(),
            Value::Array(
                ValueType::F32,
                vocab.scores.iter().map(|&s| Value::F32(s)).collect(),
            ),
        ));
    }
    kv.push((
        "tokenizer.ggml.token_type".into(),
        Value::Array(
            ValueType::I32,
            vocab.types.iter().map(|&t| Value::I32(t)).collect(),
        ),
    ));
    if !vocab.merges.is_empty() {
        kv.push((
            "tokenizer.ggml.merges".into(),
            Value::string_array(vocab.merges.clone()),
        ));
    }
    for (k, v) in [
        ("bos_token_id", vocab.bos),
        ("eos_token_id", vocab.eos),
        ("eot_token_id", vocab.eot),
        ("unknown_token_id", vocab.unk),
    ] {
        if let Some(id) = v {
            kv.push((format!("tokenizer.ggml.{}", k), Value::U32(id)));
        }
    }
    kv.push((
        "tokenizer.ggml.add_bos_token".into(),
        Value::Bool(vocab.add_bos),
    ));
    if let Some(t) = &vocab.chat_template {
        kv.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
    }
    Ok(kv)
}

pub fn convert(opts: &ConvertOptions) -> Result<ConvertReport> {
    let dir = &opts.input;
    if !dir.is_dir() {
        let kind = if dir.exists() {
            std::io::ErrorKind::NotADirectory
        } else {
            std::io::ErrorKind::NotFound
        };
        return Err(io_error(
            kind,
            format!("{} is not a directory", dir.display()),
        ));
    }
    if !EMBD_TYPES.contains(&opts.embd_type) {
        bail!("--embd-type must be f16, f32, q8_0 or q6_k");
    }
    if !OUTTYPES.contains(&opts.outtype) {
        bail!("--outtype must be i2_s, tq2_0, tq1_0, f16 or f32");
    }
    let cfg = HfConfig::load(dir)?;
    let ck = Checkpoint::open(dir)?;
    let (planned, fallbacks) = plan(&cfg, &ck, opts.outtype, opts.embd_type)?;
    let vocab = HfVocab::load(dir, &cfg, cfg.vocab)?;
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let kv = metadata(&cfg, &vocab, &name, opts.outtype)?;
    let outfile = output_path(dir, opts.outfile.as_deref(), opts.outtype, opts.embd_type);
    if outfile.exists() && !opts.force && !crate::gguf::writer::is_stream_target(&outfile) {
        return Err(io_error(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} already exists (use --force to overwrite)",
                outfile.display()
            ),
        ));
    }
    // Never write over an input file.
    if let (Ok(o), Ok(d)) = (outfile.canonicalize(), dir.canonicalize()) {
        if o.parent() == Some(d.as_path()) {
            let fname = o
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if fname.ends_with(".safetensors")
                || fname.ends_with(".json")
                || fname == "tokenizer.model"
            {
                bail!("refusing to overwrite the input file {}", o.display());
            }
        }
    }
    let plans: Vec<TensorPlan> = planned.iter().map(|p| p.plan.clone()).collect();
    let mut report = ConvertReport {
        outfile: outfile.clone(),
        arch: cfg.arch.gguf.into(),
        tensors: planned.len(),
        continuous: 0,
        ternary: 0,
        packed: 0,
        fallbacks: fallbacks.clone(),
        bytes: 0,
    };
    let tty = std::io::stderr().is_terminal() && !opts.quiet;
    let pb = if tty {
        let pb = indicatif::ProgressBar::new(planned.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(pb)
    } else {
        None
    };
    let say = |s: String| {
        if opts.quiet {
            return;
        }
        match &pb {
            Some(pb) => pb.println(s),
            None => eprintln!("{}", s),
        }
    };
    if !opts.quiet {
        say(format!(
            "tern convert: {} ({}) → {} [{}], {} layers, hidden {}, vocab {}{}",
            cfg.architecture,
            cfg.activation.name(),
            cfg.arch.gguf,
            opts.outtype.name(),
            cfg.layers,
            cfg.hidden,
            cfg.vocab,
            if vocab.padded > 0 {
                format!(" ({} [PAD] tokens added)", vocab.padded)
            } else {
                String::new()
            }
        ));
        for f in &fallbacks {
            say(format!("  fallback: {}", f));
        }
    }
    let mut counts = (0usize, 0usize, 0usize);
    let recipe = Recipe::of(&cfg);
    let written = write_gguf(&outfile, opts.force, &kv, &plans, |i, w| {
        let p = &planned[i];
        if let Some(pb) = &pb {
            pb.set_message(p.plan.name.clone());
        }
        if p.role != Role::Projection && matches!(p.plan.ty, GgmlType::Q8_0 | GgmlType::Q6K) {
            say(format!(
                "  {:<28} {:<10} {} × {}  → {}",
                p.plan.name,
                if p.role == Role::Embedding {
                    "embedding"
                } else {
                    "head"
                },
                p.rows,
                p.cols,
                p.plan.ty.name()
            ));
        }
        if let Written::Projection {
            kind,
            scale,
            zeros,
            n,
        } = write_tensor(&ck, &cfg, recipe, p, w)?
        {
            match kind {
                TernaryKind::Continuous => counts.0 += 1,
                TernaryKind::Ternary => counts.1 += 1,
                TernaryKind::Packed => counts.2 += 1,
            }
            say(format!(
                "  {:<28} {:<10} scale {:<12.6e} zeros {:5.1}%  → {}",
                p.plan.name,
                kind.name(),
                scale,
                100.0 * zeros as f64 / n.max(1) as f64,
                p.plan.ty.name()
            ));
        }
        ck.release(&p.hf_name);
        if let Some(pb) = &pb {
            pb.inc(1);
        }
        Ok(())
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    report.continuous = counts.0;
    report.ternary = counts.1;
    report.packed = counts.2;
    report.bytes = written;
    if !opts.quiet {
        eprintln!(
            "tern convert: {} projections ({} continuous → absmean, {} already ternary → kept exactly, {} packed → {}); wrote {} ({:.1} MB)",
            counts.0 + counts.1 + counts.2,
            counts.0,
            counts.1,
            counts.2,
            recipe.rule.formula(),
            outfile.display(),
            report.bytes as f64 / 1e6
        );
    }
    Ok(report)
}

//! Hyper-parameters of a BitNet GGUF, validated in one place.
//!
//! A GGUF header is hostile input: each count is read as a bounded integer,
//! the derived widths (`n_head · head_dim`, `n_head_kv · head_dim`) are
//! computed with checked arithmetic, and every tensor the counts imply is
//! looked up with the dimensions they imply ([`Hparams::check_tensors`])
//! before the loader sizes anything from them. Since the tensors' bytes lie
//! in the file, this bounds every allocation by the file's size.

use crate::arch::{Arch, RopeLayout};
use crate::gguf::{GgufFile, TensorInfo, Value};
use crate::hf::config::{Activation, RopeScaling};
use crate::rope::RopeFreqs;
use crate::untrusted::quoted;
use anyhow::{anyhow, bail, Result};

/// Largest dimension or count tern accepts from a header (llama.cpp reads
/// these as `uint32_t`; 2^31 also keeps products of two in `u64`).
pub const MAX_DIM: u64 = 1 << 31;

/// Largest head dimension tern accepts (real models use 64–256). The
/// RoPE table is sized by it before the tensors are checked against the
/// header, so a `key_length` of 2^29 with one head took 2 GiB and 18 s
/// before the tensor check refused the file.
pub const MAX_HEAD_DIM: usize = 1 << 16;

#[derive(Debug, Clone)]
pub struct Hparams {
    pub arch: String,
    /// The graph: the architecture's row.
    pub graph: &'static Arch,
    pub activation: Activation,
    pub n_vocab: usize,
    /// `<arch>.context_length` (tokens; 2048 when absent).
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub rope_theta: f32,
    /// `<arch>.rope.scaling.*` as read.
    pub rope_scaling: RopeScaling,
    /// The per-pair frequencies every position is rotated by.
    pub rope: RopeFreqs,
    pub rope_layout: RopeLayout,
    pub eps: f32,
    /// Epsilon of the per-projection input norms (`use_rms_norm` models).
    pub input_norm_eps: f32,
}

/// Per-layer tensors of every graph (ggml dims: [`Hparams::layer_tensor_dims`]).
pub const LAYER_TENSORS: &[&str] = &[
    "attn_norm",
    "ffn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// The sub-norms of the graphs that have them ([`Arch::sub_norms`]).
pub const SUB_NORM_TENSORS: &[&str] = &["attn_sub_norm", "ffn_sub_norm"];

/// Typed, bounded access to the `<arch>.*` keys of one file.
struct Keys<'a> {
    g: &'a GgufFile,
    arch: &'a str,
}

impl Keys<'_> {
    fn name(&self, k: &str) -> String {
        format!("{}.{}", self.arch, k)
    }
    fn value(&self, k: &str) -> Option<&Value> {
        self.g.get(&self.name(k))
    }
    /// An optional integer in `1..=max`; present with another type or out of
    /// range is an error (never silently the default).
    fn count(&self, k: &str, max: u64) -> Result<Option<usize>> {
        let Some(v) = self.value(k) else {
            return Ok(None);
        };
        let n = v
            .as_u64()
            .ok_or_else(|| anyhow!("metadata {} is not a non-negative integer", self.name(k)))?;
        if n == 0 || n > max {
            bail!(
                "metadata {} = {} is out of range (1..={})",
                self.name(k),
                n,
                max
            );
        }
        Ok(Some(usize::try_from(n)?))
    }
    fn required(&self, k: &str) -> Result<usize> {
        self.count(k, MAX_DIM)?
            .ok_or_else(|| anyhow!("metadata {} is missing", self.name(k)))
    }
    /// An optional finite positive number that stays so as an f32.
    fn positive(&self, k: &str, default: f32) -> Result<f32> {
        let Some(v) = self.value(k) else {
            return Ok(default);
        };
        let x = v
            .as_f64()
            .ok_or_else(|| anyhow!("metadata {} is not a number", self.name(k)))?;
        // `as` from f64 to f32 rounds (to ±inf past f32's range); the check
        // below is on the value the graph will use.
        let x32 = x as f32;
        if !(x32.is_finite() && x32 > 0.0) {
            bail!(
                "metadata {} = {} is not a finite positive f32",
                self.name(k),
                x
            );
        }
        Ok(x32)
    }
}

fn checked_width(a: usize, b: usize, what: &str) -> Result<usize> {
    a.checked_mul(b)
        .filter(|&w| w as u64 <= MAX_DIM)
        .ok_or_else(|| anyhow!("{} = {} × {} overflows", what, a, b))
}

impl Hparams {
    /// Read the hyper-parameters of `g` for a vocabulary of `n_vocab`
    /// tokens. Counts are bounded to `1..=MAX_DIM`, the head widths are
    /// computed with checked arithmetic, and the keys must agree with each
    /// other. Call [`Hparams::check_tensors`] before sizing anything.
    pub fn from_gguf(g: &GgufFile, n_vocab: usize) -> Result<Hparams> {
        let arch = g
            .architecture()
            .ok_or_else(|| anyhow!("general.architecture is missing"))?;
        let graph = Arch::from_gguf(arch).ok_or_else(|| {
            anyhow!(
                "architecture {} is not a graph tern runs ({})",
                quoted(arch),
                Arch::gguf_names()
            )
        })?;
        let k = Keys { g, arch };
        let n_embd = k.required("embedding_length")?;
        let n_layer = k.required("block_count")?;
        let n_ff = k.required("feed_forward_length")?;
        let n_head = k.required("attention.head_count")?;
        let n_head_kv = k
            .count("attention.head_count_kv", MAX_DIM)?
            .unwrap_or(n_head);
        if n_head % n_head_kv != 0 {
            bail!(
                "attention.head_count {} is not a multiple of attention.head_count_kv {}",
                n_head,
                n_head_kv
            );
        }
        let head_dim = match k.count("attention.key_length", MAX_DIM)? {
            Some(v) => v,
            None => {
                if n_embd % n_head != 0 {
                    bail!(
                        "embedding_length {} is not divisible by head_count {}",
                        n_embd,
                        n_head
                    );
                }
                n_embd / n_head
            }
        };
        if let Some(v) = k.count("attention.value_length", MAX_DIM)? {
            if v != head_dim {
                bail!(
                    "attention.value_length {} differs from the key length {}; tern needs them equal",
                    v,
                    head_dim
                );
            }
        }
        let rope_dim = k
            .count("rope.dimension_count", MAX_DIM)?
            .unwrap_or(head_dim);
        if rope_dim != head_dim || head_dim % 2 != 0 {
            bail!(
                "rope.dimension_count {} must equal the (even) head dimension {}",
                rope_dim,
                head_dim
            );
        }
        // Widths of Q and of K/V: checked, so that a huge key_length cannot
        // wrap back to a width the tensors happen to have.
        checked_width(n_head, head_dim, "attention.head_count × key_length")?;
        checked_width(n_head_kv, head_dim, "attention.head_count_kv × key_length")?;
        if head_dim > MAX_HEAD_DIM {
            bail!(
                "head dimension {} (attention.key_length, or embedding_length / head_count) is over {}",
                head_dim,
                MAX_HEAD_DIM
            );
        }
        let activation = match k.value("hidden_activation") {
            Some(_) if !graph.activation.from_metadata => graph.activation.default,
            None => graph.activation.default,
            Some(v) => {
                let s = v.as_str().ok_or_else(|| {
                    anyhow!("metadata {} is not a string", k.name("hidden_activation"))
                })?;
                Activation::parse(s).ok_or_else(|| {
                    anyhow!(
                        "{} = {} is not relu2 or silu",
                        k.name("hidden_activation"),
                        quoted(s)
                    )
                })?
            }
        };
        let eps = k.positive("attention.layer_norm_rms_epsilon", 1e-5)?;
        let rope_theta = k.positive("rope.freq_base", 10000.0)?;
        let input_norm_eps = k.positive("bitlinear.input_norm_rms_epsilon", 1e-6)?;
        let rope_scaling = rope_scaling(g, arch)?;
        let freq_factors = match g.tensor("rope_freqs.weight") {
            None => None,
            Some(t) => {
                let half = u64::try_from(head_dim / 2)?;
                if t.dims != [half] {
                    bail!(
                        "tensor rope_freqs.weight has dims {:?}, expected [{}]",
                        t.dims,
                        half
                    );
                }
                let f = super::f32_data(g, t)?;
                if f.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                    bail!("tensor rope_freqs.weight holds a value that is not a positive number");
                }
                Some(f)
            }
        };
        let rope = crate::rope::freqs(head_dim, rope_theta, rope_scaling, freq_factors.as_deref());
        let n_ctx_train = k
            .count("context_length", u64::from(u32::MAX))?
            .unwrap_or(2048);
        if let Some(v) = k.value("vocab_size") {
            let v = v.as_u64().ok_or_else(|| {
                anyhow!(
                    "metadata {} is not a non-negative integer",
                    k.name("vocab_size")
                )
            })?;
            if usize::try_from(v).ok() != Some(n_vocab) {
                bail!(
                    "{} = {} but the vocabulary has {} tokens",
                    k.name("vocab_size"),
                    v,
                    n_vocab
                );
            }
        }
        Ok(Hparams {
            arch: arch.to_string(),
            graph,
            activation,
            n_vocab,
            n_ctx_train,
            n_embd,
            n_layer,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            rope_dim,
            rope_theta,
            rope_scaling,
            rope,
            rope_layout: graph.rope,
            eps,
            input_norm_eps,
        })
    }

    /// Width of the attention output (`n_head · head_dim`, checked at load).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    /// Width of K and V (`n_head_kv · head_dim`, checked at load).
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// ggml dims (`[cols, rows]`, or `[n]` for a norm) the hyper-parameters
    /// imply for tensor `name` of layer `l`.
    pub fn layer_tensor_dims(&self, name: &str) -> Vec<u64> {
        let (d, qd, kvd, ff) = (self.n_embd, self.q_dim(), self.kv_dim(), self.n_ff);
        let v: &[usize] = match name {
            "attn_norm" | "ffn_norm" => &[d],
            "attn_sub_norm" => &[qd],
            "ffn_sub_norm" => &[ff],
            "attn_q" => &[d, qd],
            "attn_k" | "attn_v" => &[d, kvd],
            "attn_output" => &[qd, d],
            "ffn_gate" | "ffn_up" => &[d, ff],
            "ffn_down" => &[ff, d],
            other => unreachable!("unknown layer tensor {other}"),
        };
        v.iter().map(|&x| x as u64).collect()
    }

    /// Every tensor the hyper-parameters imply, with the dims they imply:
    /// `token_embd`, `output_norm`, `output` (when present) and
    /// `LAYER_TENSORS` of each of the `n_layer` blocks. The block count is
    /// first compared with the number of tensors in the file, so a huge
    /// count fails at once, before any per-layer work.
    pub fn check_tensors(&self, g: &GgufFile) -> Result<()> {
        let sub_norms: &[&str] = match self.graph.sub_norms {
            Some(_) => SUB_NORM_TENSORS,
            None => &[],
        };
        let per_layer = LAYER_TENSORS.len() + sub_norms.len();
        if self
            .n_layer
            .checked_mul(per_layer)
            .is_none_or(|n| n > g.tensors.len())
        {
            bail!(
                "{}.block_count = {} needs {} per-layer tensors, the file has {} tensors in all",
                self.arch,
                self.n_layer,
                per_layer,
                g.tensors.len()
            );
        }
        let want = |name: &str, dims: Vec<u64>| tensor_with_dims(g, name, &dims).map(|_| ());
        let (d, nv) = (self.n_embd as u64, self.n_vocab as u64);
        want("token_embd.weight", vec![d, nv])?;
        if g.tensor("output.weight").is_some() {
            want("output.weight", vec![d, nv])?;
        }
        want("output_norm.weight", vec![d])?;
        for l in 0..self.n_layer {
            for t in LAYER_TENSORS.iter().chain(sub_norms) {
                want(
                    &format!("blk.{}.{}.weight", l, t),
                    self.layer_tensor_dims(t),
                )?;
            }
        }
        if let Some(t) = g
            .tensors
            .iter()
            .find(|t| layer_index(&t.name).is_some_and(|l| l >= self.n_layer))
        {
            bail!(
                "tensor {} lies past {}.block_count = {}",
                quoted(&t.name),
                self.arch,
                self.n_layer
            );
        }
        Ok(())
    }
}

/// `<arch>.rope.scaling.*` (llama.cpp's keys; the older
/// `<arch>.rope.scale_linear` too). A type tern cannot apply is an error.
fn rope_scaling(g: &GgufFile, arch: &str) -> Result<RopeScaling> {
    let key = |k: &str| format!("{}.{}", arch, k);
    let factor = g.get_f64(&key("rope.scaling.factor"));
    let positive = |f: Option<f64>, what: &str| -> Result<f32> {
        match f {
            Some(x) if x.is_finite() && x > 0.0 && x < 1e6 => Ok(x as f32),
            Some(x) => bail!("{} = {} is not a positive number", key(what), x),
            None => bail!("{} is missing", key(what)),
        }
    };
    let ty = match g.get_str(&key("rope.scaling.type")) {
        Some(t) => t.to_ascii_lowercase(),
        None => match g.get_f64(&key("rope.scale_linear")) {
            Some(f) if f != 1.0 => {
                return Ok(RopeScaling::Linear {
                    factor: positive(Some(f), "rope.scale_linear")?,
                })
            }
            _ => return Ok(RopeScaling::None),
        },
    };
    Ok(match ty.as_str() {
        "none" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: positive(factor, "rope.scaling.factor")?,
        },
        "yarn" => {
            let orig = g
                .get_u64(&key("rope.scaling.original_context_length"))
                .ok_or_else(|| {
                    anyhow!("{} is missing", key("rope.scaling.original_context_length"))
                })?;
            if orig == 0 || orig > (1 << 31) {
                bail!(
                    "{} = {} is out of range",
                    key("rope.scaling.original_context_length"),
                    orig
                );
            }
            for k in [
                "rope.scaling.yarn_beta_fast",
                "rope.scaling.yarn_beta_slow",
                "rope.scaling.attn_factor",
            ] {
                if let Some(v) = g.get_f64(&key(k)) {
                    let default = match k {
                        "rope.scaling.yarn_beta_fast" => 32.0,
                        "rope.scaling.yarn_beta_slow" => 1.0,
                        _ => 1.0,
                    };
                    if v != default {
                        bail!(
                            "{} = {}: tern applies YaRN only with llama.cpp's defaults",
                            key(k),
                            v
                        );
                    }
                }
            }
            RopeScaling::Yarn {
                factor: positive(factor, "rope.scaling.factor")?,
                original_context: u32::try_from(orig)?,
            }
        }
        other => bail!(
            "{} = {:?}: tern cannot apply this RoPE scaling (none, linear and yarn are supported)",
            key("rope.scaling.type"),
            crate::hf::short(other)
        ),
    })
}

/// Tensor `name` (one tern asks for, not one read from the file) of `g`,
/// which must have ggml dims `dims`.
pub fn tensor_with_dims<'g>(g: &'g GgufFile, name: &str, dims: &[u64]) -> Result<&'g TensorInfo> {
    let t = g
        .tensor(name)
        .ok_or_else(|| anyhow!("tensor {} is missing", name))?;
    if t.dims != dims {
        bail!(
            "tensor {} has dims {:?}, the hyper-parameters imply {:?}",
            name,
            t.dims,
            dims
        );
    }
    Ok(t)
}

/// `N` of a `blk.N.…` tensor name.
fn layer_index(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

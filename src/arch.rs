//! The architectures tern converts and runs: one row per architecture over
//! shared blocks (llama.cpp's `src/models/*.cpp` idea). The converter reads
//! the Hugging Face names and what to write from a row; the runtime reads
//! the graph from it. A new family (a Qwen3- or Gemma3-based BitNet) is a
//! row here plus, if it needs one, a new block variant — not a copy of the
//! forward pass. Shared by every row: token embedding, pre-norms
//! `attn_norm`/`ffn_norm`, GQA attention, gated FFN, `output_norm`, and the
//! head `output.weight` when the file has one (else tied to the embedding).

use crate::hf::config::Activation;

/// How RoPE pairs the elements of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Element `i` pairs with `i + d/2` (GPT-NeoX, HF's rotate-half;
    /// llama.cpp `LLAMA_ROPE_TYPE_NEOX`). The BitNet graphs.
    Neox,
    /// Elements `2i` and `2i+1` pair (llama.cpp `LLAMA_ROPE_TYPE_NORM`, the
    /// `llama` graph). A Hugging Face checkpoint written in rotate-half form
    /// gets its Q and K rows permuted at conversion (see
    /// [`crate::convert::permute_rope_rows`]).
    Adjacent,
}

/// Which FFN activations a graph accepts and the one it takes when the file
/// names none.
#[derive(Debug, Clone, Copy)]
pub struct ActivationRule {
    pub default: Activation,
    /// Whether `<arch>.hidden_activation` may choose another one.
    pub from_metadata: bool,
}

/// One architecture: what the graph is and how its tensors are named.
#[derive(Debug)]
pub struct Arch {
    /// `general.architecture` in GGUF.
    pub gguf: &'static str,
    /// Hugging Face `architectures[0]` spellings that map to this row
    /// (`LlamaForCausalLM` only together with a bitnet `quantization_config`).
    pub hf: &'static [&'static str],
    pub activation: ActivationRule,
    /// The sub-norms of the BitNet graphs (docs §1), before `attn_output`
    /// and `ffn_down`, with the HF names each may carry; `None`: no sub-norms.
    pub sub_norms: Option<SubNorms>,
    pub rope: RopeLayout,
    /// Whether tern writes `<arch>.hidden_activation` (the BitNet graphs, whose
    /// activation differs between checkpoints; llama is always SiLU).
    pub writes_activation: bool,
    /// Whether every projection must be ternary (a `llama` GGUF is only run
    /// when its projections are: the same file name holds ordinary Llama
    /// models, which BitLinear semantics would silently break).
    pub ternary_only: bool,
}

/// HF names of the sub-norm weights, in order of preference.
#[derive(Debug, Clone, Copy)]
pub struct SubNorms {
    pub attn: &'static [&'static str],
    pub ffn: &'static [&'static str],
}

const BITNET_SUB_NORMS: SubNorms = SubNorms {
    attn: &["self_attn.attn_sub_norm", "self_attn.inner_attn_ln"],
    ffn: &["mlp.ffn_sub_norm", "mlp.ffn_layernorm"],
};

/// Every architecture tern knows.
pub static ARCHS: &[Arch] = &[
    Arch {
        gguf: "bitnet-b1.58",
        hf: &["BitNetForCausalLM"],
        activation: ActivationRule {
            default: Activation::Relu2,
            from_metadata: true,
        },
        sub_norms: Some(BITNET_SUB_NORMS),
        rope: RopeLayout::Neox,
        writes_activation: true,
        ternary_only: false,
    },
    Arch {
        gguf: "bitnet-25",
        hf: &[],
        activation: ActivationRule {
            default: Activation::Relu2,
            from_metadata: true,
        },
        sub_norms: Some(BITNET_SUB_NORMS),
        rope: RopeLayout::Neox,
        writes_activation: true,
        ternary_only: false,
    },
    Arch {
        gguf: "bitnet",
        hf: &["BitnetForCausalLM"],
        activation: ActivationRule {
            default: Activation::Silu,
            from_metadata: true,
        },
        sub_norms: Some(BITNET_SUB_NORMS),
        rope: RopeLayout::Neox,
        writes_activation: true,
        ternary_only: false,
    },
    Arch {
        gguf: "llama",
        hf: &["LlamaForCausalLM"],
        activation: ActivationRule {
            default: Activation::Silu,
            from_metadata: false,
        },
        sub_norms: None,
        rope: RopeLayout::Adjacent,
        writes_activation: false,
        ternary_only: true,
    },
];

impl Arch {
    /// The row of a GGUF `general.architecture`.
    pub fn from_gguf(name: &str) -> Option<&'static Arch> {
        ARCHS.iter().find(|a| a.gguf == name)
    }

    /// The row of a Hugging Face `architectures[0]`.
    pub fn from_hf(name: &str) -> Option<&'static Arch> {
        ARCHS.iter().find(|a| a.hf.contains(&name))
    }

    /// The GGUF names tern runs, for messages.
    pub fn gguf_names() -> String {
        ARCHS.iter().map(|a| a.gguf).collect::<Vec<_>>().join(", ")
    }

    /// The HF names tern converts, for messages.
    pub fn hf_names() -> String {
        ARCHS
            .iter()
            .flat_map(|a| a.hf.iter().copied())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_unique_and_found() {
        for (i, a) in ARCHS.iter().enumerate() {
            assert!(std::ptr::eq(Arch::from_gguf(a.gguf).unwrap(), a));
            assert!(ARCHS[i + 1..].iter().all(|b| b.gguf != a.gguf));
            for h in a.hf {
                assert!(std::ptr::eq(Arch::from_hf(h).unwrap(), a));
            }
        }
        assert!(Arch::from_gguf("qwen3").is_none());
        assert_eq!(Arch::from_gguf("llama").unwrap().rope, RopeLayout::Adjacent);
    }
}

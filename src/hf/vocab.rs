//! The vocabulary a converter writes: read from `tokenizer.json` (byte-level
//! BPE) or `tokenizer.model` (SentencePiece), never from `tokenizer_class`.

use super::config::{json_shown, token_ids, HfConfig};
use super::sentencepiece;
use crate::untrusted::quoted;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as J;
use std::collections::HashMap;
use std::path::Path;

pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_UNKNOWN: i32 = 2;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_UNUSED: i32 = 5;

/// The LLaMA-3 pre-tokenizer split (GGUF `tokenizer.ggml.pre = llama-bpe`).
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's split (GGUF `tokenizer.ggml.pre = gpt-2`).
pub const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

#[derive(Debug, Clone)]
pub struct HfVocab {
    /// `gpt2` or `llama`.
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub scores: Vec<f32>,
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
    /// How many `[PADn]` tokens were appended to reach the embedding rows.
    pub padded: usize,
}

fn read_json(path: &Path) -> Result<Option<J>> {
    if !path.is_file() {
        return Ok(None);
    }
    let t =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let j = serde_json::from_str(&t).map_err(|e| {
        anyhow!(
            "{} is not valid JSON: {}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            e
        )
    })?;
    Ok(Some(j))
}

/// A special-token entry in tokenizer_config / special_tokens_map is either a
/// string or `{"content": ...}`.
fn token_string(v: Option<&J>) -> Option<String> {
    match v? {
        J::String(s) => Some(s.clone()),
        J::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

fn collect_regexes(j: &J, out: &mut Vec<String>) {
    match j {
        J::Object(o) => {
            if o.get("type").and_then(|t| t.as_str()) == Some("Split") {
                if let Some(r) = o
                    .get("pattern")
                    .and_then(|p| p.get("Regex"))
                    .and_then(|r| r.as_str())
                {
                    out.push(r.to_string());
                }
            }
            if o.get("type").and_then(|t| t.as_str()) == Some("ByteLevel")
                && o.get("use_regex").and_then(|u| u.as_bool()).unwrap_or(true)
            {
                out.push(GPT2_REGEX.to_string());
            }
            for v in o.values() {
                collect_regexes(v, out);
            }
        }
        J::Array(a) => a.iter().for_each(|v| collect_regexes(v, out)),
        _ => {}
    }
}

/// Whether a tokenizer.json holds the Falcon family's special tokens
/// (`>>TITLE<<`, `>>ABSTRACT<<`, … first in Falcon, Falcon3 and Falcon-E
/// vocabularies).
fn has_falcon_specials(tok: &J) -> bool {
    let in_vocab = |s: &str| {
        tok.get("model")
            .and_then(|m| m.get("vocab"))
            .and_then(|v| v.get(s))
            .is_some()
            || tok
                .get("added_tokens")
                .and_then(|a| a.as_array())
                .is_some_and(|a| {
                    a.iter()
                        .any(|t| t.get("content").and_then(|c| c.as_str()) == Some(s))
                })
    };
    in_vocab(">>TITLE<<") && in_vocab(">>ABSTRACT<<")
}

/// Name the pre-tokenizer of a tokenizer.json the way llama.cpp does. The
/// split decides the tokenization; a LLaMA-3 split in a Falcon vocabulary is
/// named `falcon3`, which llama.cpp (and tern) run with the LLaMA-3 regex, as
/// `falcon_e` (the two names differ only in llama.cpp's vocabulary hash).
fn detect_pre(tok: &J) -> Result<String> {
    let mut regexes = Vec::new();
    if let Some(p) = tok.get("pre_tokenizer") {
        collect_regexes(p, &mut regexes);
    }
    match regexes.as_slice() {
        [r] if r == LLAMA3_REGEX && has_falcon_specials(tok) => Ok("falcon3".into()),
        [r] if r == LLAMA3_REGEX => Ok("llama-bpe".into()),
        [r] if r == GPT2_REGEX => Ok("gpt-2".into()),
        [] => bail!("tokenizer.json has no pre-tokenizer split; tern cannot tell which GGUF pre-tokenizer applies"),
        other => bail!(
            "tokenizer.json uses a pre-tokenizer split tern does not recognize ({}); supported: LLaMA-3 (llama-bpe) and GPT-2",
            other.iter().map(|r| quoted(r).to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn looks_special(t: &str) -> bool {
    (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with('<') && t.ends_with('>') && t.len() > 2 && !t.contains(' '))
}

/// The tokenizer files of a checkpoint folder, read and parsed; absent
/// files are `None` (or JSON `null`). Kept apart from [`HfVocab::build`] so
/// that the vocabulary logic runs on bytes too (tests, fuzzing).
#[derive(Debug, Clone, Default)]
pub struct TokenizerFiles {
    pub tokenizer_json: Option<J>,
    pub tokenizer_model: Option<Vec<u8>>,
    pub tokenizer_config: J,
    pub special_tokens_map: J,
    pub generation_config: J,
    pub chat_template_jinja: Option<String>,
}

impl TokenizerFiles {
    pub fn read(dir: &Path) -> Result<TokenizerFiles> {
        let sp_path = dir.join("tokenizer.model");
        let jinja = dir.join("chat_template.jinja");
        Ok(TokenizerFiles {
            tokenizer_json: read_json(&dir.join("tokenizer.json"))?,
            tokenizer_model: if sp_path.is_file() {
                Some(
                    std::fs::read(&sp_path)
                        .with_context(|| format!("cannot read {}", sp_path.display()))?,
                )
            } else {
                None
            },
            tokenizer_config: read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(J::Null),
            special_tokens_map: read_json(&dir.join("special_tokens_map.json"))?.unwrap_or(J::Null),
            generation_config: read_json(&dir.join("generation_config.json"))?.unwrap_or(J::Null),
            chat_template_jinja: if jinja.is_file() {
                Some(
                    std::fs::read_to_string(&jinja)
                        .with_context(|| format!("cannot read {}", jinja.display()))?,
                )
            } else {
                None
            },
        })
    }
}

impl HfVocab {
    /// Build the vocabulary for a model with `n_rows` embedding rows from
    /// the tokenizer files in `dir`.
    pub fn load(dir: &Path, cfg: &HfConfig, n_rows: usize) -> Result<HfVocab> {
        let files = TokenizerFiles::read(dir)?;
        if files.tokenizer_json.is_none() && files.tokenizer_model.is_none() {
            bail!(
                "{} has neither tokenizer.json nor tokenizer.model; tern needs one of them to build the vocabulary",
                dir.display()
            );
        }
        Self::build(&files, cfg, n_rows)
    }

    /// Build the vocabulary for a model with `n_rows` embedding rows:
    /// tokenizer.json (preferred) or tokenizer.model, padded with `[PADn]`
    /// up to `n_rows`, special tokens from the configs. Every id is checked
    /// to lie in the vocabulary.
    pub fn build(files: &TokenizerFiles, cfg: &HfConfig, n_rows: usize) -> Result<HfVocab> {
        let tcfg = &files.tokenizer_config;
        let smap = &files.special_tokens_map;
        let gcfg = &files.generation_config;
        let mut v = if let Some(tj) = &files.tokenizer_json {
            Self::from_tokenizer_json(tj, n_rows)?
        } else if let Some(bytes) = &files.tokenizer_model {
            let m = sentencepiece::parse_model(bytes)?;
            let mut v = HfVocab::empty("llama");
            for p in &m.pieces {
                v.tokens.push(p.piece.clone());
                v.scores.push(p.score);
                v.types.push(p.kind.gguf_token_type());
            }
            // Absent fields take the proto defaults (unk 0, bos 1, eos 2; -1 = none).
            let id = |x: Option<i32>, d: i32| u32::try_from(x.unwrap_or(d)).ok();
            v.unk = id(m.unk_id, 0);
            v.bos = id(m.bos_id, 1);
            v.eos = id(m.eos_id, 2);
            v
        } else {
            bail!("neither tokenizer.json nor tokenizer.model was given");
        };

        // Sizes: the vocabulary must cover exactly the embedding rows.
        if v.tokens.len() > n_rows {
            bail!(
                "the tokenizer has {} tokens but the embedding has only {} rows",
                v.tokens.len(),
                n_rows
            );
        }
        while v.tokens.len() < n_rows {
            let i = v.tokens.len();
            v.tokens.push(format!("[PAD{}]", i));
            v.types.push(TOKEN_UNUSED);
            if !v.scores.is_empty() {
                v.scores.push(-1000.0);
            }
            v.padded += 1;
        }

        let lookup = |s: &str| {
            v.tokens
                .iter()
                .position(|t| t == s)
                .and_then(|i| u32::try_from(i).ok())
        };
        // BOS / EOS: the tokenizer's own strings first, then config ids.
        let bos_s =
            token_string(tcfg.get("bos_token")).or_else(|| token_string(smap.get("bos_token")));
        let eos_s =
            token_string(tcfg.get("eos_token")).or_else(|| token_string(smap.get("eos_token")));
        if let Some(id) = bos_s.as_deref().and_then(lookup) {
            v.bos = Some(id);
        } else if v.bos.is_none() {
            v.bos = cfg.bos_token_id;
        }
        if let Some(id) = eos_s.as_deref().and_then(lookup) {
            v.eos = Some(id);
        } else if v.eos.is_none() {
            v.eos = cfg.eos_token_ids.first().copied();
        }
        // End of turn: <|eot_id|> when present, else another generation eos id.
        let gen_eos = token_ids(
            "generation_config.json",
            "eos_token_id",
            gcfg.get("eos_token_id"),
        )?;
        v.eot = lookup("<|eot_id|>")
            .or_else(|| lookup("<|im_end|>"))
            .or_else(|| lookup("<end_of_turn>"))
            .or_else(|| gen_eos.iter().copied().find(|&i| Some(i) != v.eos));
        for (what, id) in [
            ("bos", v.bos),
            ("eos", v.eos),
            ("eot", v.eot),
            ("unknown", v.unk),
        ] {
            if let Some(id) = id {
                if usize::try_from(id).map_or(true, |i| i >= v.tokens.len()) {
                    bail!(
                        "{} token id {} is outside the vocabulary of {}",
                        what,
                        id,
                        v.tokens.len()
                    );
                }
            }
        }
        v.add_bos = match tcfg.get("add_bos_token").and_then(|b| b.as_bool()) {
            Some(b) => b,
            None => v.model == "llama" || v.add_bos,
        };
        v.chat_template = match tcfg.get("chat_template") {
            Some(J::String(s)) => Some(s.clone()),
            Some(J::Array(a)) => a
                .iter()
                .find(|e| e.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| a.first())
                .and_then(|e| e.get("template"))
                .and_then(|t| t.as_str())
                .map(String::from),
            _ => None,
        };
        if v.chat_template.is_none() {
            v.chat_template = files.chat_template_jinja.clone();
        }
        Ok(v)
    }

    fn empty(model: &str) -> HfVocab {
        HfVocab {
            model: model.into(),
            pre: None,
            tokens: vec![],
            types: vec![],
            scores: vec![],
            merges: vec![],
            bos: None,
            eos: None,
            eot: None,
            unk: None,
            add_bos: false,
            chat_template: None,
            padded: 0,
        }
    }

    /// Byte-level BPE from tokenizer.json: ids exactly as the file numbers
    /// them, no special token inserted. Every id must be below `n_rows`
    /// (the embedding rows) before anything is sized from it.
    pub fn from_tokenizer_json(tj: &J, n_rows: usize) -> Result<HfVocab> {
        let model = tj
            .get("model")
            .ok_or_else(|| anyhow!("tokenizer.json has no model"))?;
        let mtype = model.get("type").and_then(|t| t.as_str()).unwrap_or("");
        if mtype != "BPE" {
            bail!(
                "tokenizer.json model type {} is not supported (byte-level BPE only)",
                quoted(mtype)
            );
        }
        let token_id = |what: &dyn std::fmt::Display, id: &J| -> Result<u32> {
            match id.as_u64().and_then(|i| u32::try_from(i).ok()) {
                Some(i) if usize::try_from(i).is_ok_and(|i| i < n_rows) => Ok(i),
                _ => bail!(
                    "tokenizer.json: {} has id {}, outside the {} embedding rows",
                    what,
                    json_shown(id),
                    n_rows
                ),
            }
        };
        let vocab = model
            .get("vocab")
            .and_then(|v| v.as_object())
            .ok_or_else(|| anyhow!("tokenizer.json: model.vocab missing"))?;
        let mut by_id: HashMap<u32, (String, bool)> = HashMap::new();
        for (tok, id) in vocab {
            let id = token_id(&format_args!("token {}", quoted(tok)), id)?;
            by_id.insert(id, (tok.clone(), false));
        }
        let mut added_special = HashMap::new();
        if let Some(added) = tj.get("added_tokens").and_then(|a| a.as_array()) {
            for a in added {
                let id = token_id(&"an added token", a.get("id").unwrap_or(&J::Null))?;
                let content = a
                    .get("content")
                    .and_then(|x| x.as_str())
                    .unwrap_or("")
                    .to_string();
                let special = a.get("special").and_then(|x| x.as_bool()).unwrap_or(false);
                added_special.insert(id, special);
                by_id.insert(id, (content, true));
            }
        }
        // Every id is below n_rows (checked above), so this bounds the padding.
        let n = by_id.keys().max().map_or(0, |&m| m + 1);
        let mut v = HfVocab::empty("gpt2");
        for i in 0..n {
            match by_id.get(&i) {
                Some((t, added)) => {
                    v.tokens.push(t.clone());
                    v.types.push(if *added {
                        if added_special.get(&i).copied().unwrap_or(false) || looks_special(t) {
                            TOKEN_CONTROL
                        } else {
                            TOKEN_USER_DEFINED
                        }
                    } else {
                        TOKEN_NORMAL
                    });
                }
                None => {
                    v.tokens.push(format!("[PAD{}]", i));
                    v.types.push(TOKEN_UNUSED);
                }
            }
        }
        if let Some(merges) = model.get("merges").and_then(|m| m.as_array()) {
            for m in merges {
                match m {
                    J::String(s) => v.merges.push(s.clone()),
                    J::Array(p) if p.len() == 2 => {
                        let a = p[0].as_str().unwrap_or("");
                        let b = p[1].as_str().unwrap_or("");
                        v.merges.push(format!("{} {}", a, b));
                    }
                    _ => bail!("tokenizer.json: malformed merge {}", json_shown(m)),
                }
            }
        }
        v.pre = Some(detect_pre(tj)?);
        // BOS added by the post-processor template?
        if let Some(pp) = tj.get("post_processor") {
            let s = pp.to_string();
            v.add_bos = s.contains("\"single\":[{\"SpecialToken\"");
        }
        Ok(v)
    }
}

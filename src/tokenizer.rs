//! Runtime tokenizer built from GGUF tokenizer metadata (llama.cpp conventions).
//!
//! Two vocabulary kinds are supported, chosen by `tokenizer.ggml.model`:
//!
//! * `"gpt2"`: byte-level BPE. The BPE work is done by the `tokenizers` crate, set up
//!   the way a Hugging Face `tokenizer.json` for that vocabulary would be: a regex
//!   `Split` chosen by `tokenizer.ggml.pre`, then `ByteLevel`, then BPE over the
//!   GPT-2 byte-to-unicode alphabet.
//! * `"llama"`: sentencepiece (SPM) vocabularies, tokenized like llama.cpp's SPM
//!   tokenizer: spaces become `▁`, a `▁` prefix is added, adjacent symbols are merged
//!   greedily by vocabulary score, and pieces that are not in the vocabulary fall back
//!   to `<0xXX>` byte tokens.
//!
//! In both cases control (type 3) and user-defined (type 4) tokens written in the text
//! are matched as whole tokens before the rest of the text is tokenized.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::OnceLock;

use crate::untrusted::{one_line, quoted};
use anyhow::{anyhow, bail, Result};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

/// `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
pub const TOKEN_TYPE_NORMAL: i32 = 1;
/// Unknown token (e.g. `<unk>`).
pub const TOKEN_TYPE_UNKNOWN: i32 = 2;
/// Control token (BOS, EOS, `<|eot_id|>`, ...).
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// User-defined token (added, non-special).
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;
/// Unused token (padding of the vocabulary).
pub const TOKEN_TYPE_UNUSED: i32 = 5;
/// Byte token (`<0xXX>` in sentencepiece vocabularies).
pub const TOKEN_TYPE_BYTE: i32 = 6;

/// The LLaMA-3 pre-tokenizer regex (`tokenizer.ggml.pre = "llama-bpe"`).
pub const LLAMA3_PRE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The GPT-2 pre-tokenizer regex (`tokenizer.ggml.pre = "default"` / `"gpt-2"` / missing).
pub const GPT2_PRE_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Texts of control tokens that end generation (besides the declared EOS/EOT ids).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "</s>",
    "<|endoftext|>",
    "<end_of_turn>",
];

/// The sentencepiece whitespace marker.
const SPM_SPACE: &str = "\u{2581}";

/// What a GGUF file says about its vocabulary (filled by the GGUF loader from tokenizer.ggml.* keys).
#[derive(Debug, Clone, Default)]
pub struct VocabSpec {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (sentencepiece).
    pub model: String,
    /// `tokenizer.ggml.pre`, e.g. "llama-bpe", "default", "gpt-2"; None when missing.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens` (GPT-2 byte-to-unicode encoded for gpt2).
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    /// Empty means every token is normal.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`, "a b" strings.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.scores` (llama/spm), may be empty.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
}

/// The tokenization engine behind a [`Tokenizer`].
#[derive(Clone)]
enum Engine {
    /// Byte-level BPE through the `tokenizers` crate.
    Gpt2(Box<tokenizers::Tokenizer>),
    /// llama.cpp-style sentencepiece BPE.
    Spm(SpmData),
}

/// What the SPM tokenizer needs besides the shared vocabulary tables.
#[derive(Clone)]
struct SpmData {
    /// Score of every token (0 when the file has none).
    scores: Vec<f32>,
    /// Token for each byte value (`<0xXX>`, or the single byte as a string).
    byte_tokens: Vec<Option<u32>>,
    /// The unknown token, used when a byte has no token at all.
    unk: Option<u32>,
    /// Control and user-defined tokens, longest text first, matched in raw text.
    specials: Vec<(String, u32)>,
}

/// A text fragment after special-token partitioning.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

/// Runtime tokenizer for a GGUF vocabulary.
#[derive(Clone)]
pub struct Tokenizer {
    engine: Engine,
    tokens: Vec<String>,
    types: Vec<i32>,
    token_to_id: HashMap<String, u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add_bos: bool,
    eog: HashSet<u32>,
    /// The BPE tokenizer that leaves control-token texts alone, made on
    /// first use by [`Tokenizer::encode_with`].
    gpt2_plain: OnceLock<Box<tokenizers::Tokenizer>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.engine {
            Engine::Gpt2(_) => "gpt2",
            Engine::Spm(_) => "llama",
        };
        f.debug_struct("Tokenizer")
            .field("model", &kind)
            .field("n_vocab", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl Tokenizer {
    /// Build a tokenizer from GGUF vocabulary metadata.
    pub fn from_spec(spec: &VocabSpec) -> Result<Tokenizer> {
        let n = spec.tokens.len();
        if n == 0 {
            bail!("the vocabulary is empty (tokenizer.ggml.tokens has no entries)");
        }
        if u32::try_from(n).is_err() {
            bail!("the vocabulary has {n} tokens, more than a u32 id can address");
        }
        let types = if spec.token_types.is_empty() {
            vec![TOKEN_TYPE_NORMAL; n]
        } else if spec.token_types.len() == n {
            spec.token_types.clone()
        } else {
            bail!(
                "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n}",
                spec.token_types.len()
            );
        };
        let check_id = |what: &str, id: Option<u32>| -> Result<Option<u32>> {
            match id {
                Some(id) if id as usize >= n => bail!(
                    "tokenizer.ggml.{what}_token_id {id} is out of range for a vocabulary of {n} tokens"
                ),
                other => Ok(other),
            }
        };
        let bos = check_id("bos", spec.bos)?;
        let eos = check_id("eos", spec.eos)?;
        let eot = check_id("eot", spec.eot)?;

        // Like llama.cpp, a text that appears more than once maps to its last id.
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in spec.tokens.iter().enumerate() {
            token_to_id.insert(t.clone(), i as u32);
        }

        let engine = match spec.model.as_str() {
            "gpt2" => Engine::Gpt2(Box::new(build_gpt2(spec, &types)?)),
            "llama" => Engine::Spm(build_spm(spec, &types, &token_to_id)?),
            other => bail!(
                "unsupported tokenizer model {} (tokenizer.ggml.model must be 'gpt2' or 'llama')",
                quoted(other)
            ),
        };

        let mut eog = HashSet::new();
        eog.extend(eos);
        eog.extend(eot);
        for (i, t) in spec.tokens.iter().enumerate() {
            if types[i] == TOKEN_TYPE_CONTROL && EOG_TEXTS.contains(&t.as_str()) {
                eog.insert(i as u32);
            }
        }

        Ok(Tokenizer {
            engine,
            tokens: spec.tokens.clone(),
            types,
            token_to_id,
            bos,
            eos,
            eot,
            add_bos: spec.add_bos,
            eog,
            gpt2_plain: OnceLock::new(),
        })
    }

    /// Encode text; special/control tokens written in the text (e.g. "<|eot_id|>") are
    /// matched as whole tokens; BOS prepended when `add_bos`.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        self.encode_with(text, add_bos, true)
    }

    /// [`Tokenizer::encode`], with control-token texts matched only when
    /// `parse_special` (llama.cpp's `parse_special`); otherwise they are
    /// tokenized as plain text. User-defined tokens are always matched.
    pub fn encode_with(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        if add_bos {
            let bos = self
                .bos
                .ok_or_else(|| anyhow!("cannot add BOS: the vocabulary declares no BOS token"))?;
            out.push(bos);
        }
        match &self.engine {
            Engine::Gpt2(hf) => {
                let hf = if parse_special {
                    hf
                } else {
                    self.gpt2_plain.get_or_init(|| {
                        let mut plain = hf.clone();
                        plain.set_encode_special_tokens(true);
                        plain
                    })
                };
                let enc = hf.encode_fast(text, false).map_err(|e| {
                    anyhow!("BPE tokenization failed: {}", one_line(&e.to_string()))
                })?;
                out.extend_from_slice(enc.get_ids());
            }
            Engine::Spm(spm) if parse_special => {
                self.spm_encode(spm, &spm.specials, text, &mut out)?
            }
            Engine::Spm(spm) => {
                let user: Vec<(String, u32)> = spm
                    .specials
                    .iter()
                    .filter(|(_, id)| self.types[*id as usize] != TOKEN_TYPE_CONTROL)
                    .cloned()
                    .collect();
                self.spm_encode(spm, &user, text, &mut out)?
            }
        }
        Ok(out)
    }

    /// Encode a prompt for generation: BOS first when the model adds BOS, and
    /// exactly once — a text that already begins with the BOS token's text
    /// (`<|begin_of_text|>…`) keeps its own and gets no second one. The flag
    /// says that the text brought its own BOS while the model adds one (so
    /// that a caller can say so; llama.cpp keeps both and warns).
    pub fn encode_prompt(&self, text: &str) -> Result<(Vec<u32>, bool)> {
        let mut ids = self.encode(text, false)?;
        let mut own_bos = false;
        if self.add_bos {
            if let Some(bos) = self.bos {
                if ids.first() == Some(&bos) {
                    own_bos = true;
                } else {
                    ids.insert(0, bos);
                }
            }
        }
        Ok((ids, own_bos))
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn token.
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// Whether the model wants BOS prepended to prompts.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Ids that end generation: eos, eot, and any control token whose text is one of
    /// `<|eot_id|>`, `<|end_of_text|>`, `<|im_end|>`, `</s>`, `<|endoftext|>`, `<end_of_turn>`.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The raw bytes a token stands for when printed (byte-level decoded for gpt2;
    /// control and unknown tokens give their text only if `special` is true, like
    /// llama.cpp's `token_to_piece`). Out-of-range ids give no bytes.
    pub fn token_bytes(&self, id: u32, special: bool) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        match self.types[id as usize] {
            TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN => {
                if special {
                    text.as_bytes().to_vec()
                } else {
                    Vec::new()
                }
            }
            TOKEN_TYPE_USER_DEFINED => text.as_bytes().to_vec(),
            TOKEN_TYPE_NORMAL => match self.engine {
                Engine::Gpt2(_) => byte_level_decode(text),
                Engine::Spm(_) => text.replace(SPM_SPACE, " ").into_bytes(),
            },
            TOKEN_TYPE_BYTE => match self.engine {
                Engine::Spm(_) => match parse_byte_token(text) {
                    Some(b) => vec![b],
                    None => text.as_bytes().to_vec(),
                },
                // llama.cpp prints nothing for byte-typed tokens in BPE vocabularies.
                Engine::Gpt2(_) => Vec::new(),
            },
            // Unused and undefined token types print nothing (as in llama.cpp).
            _ => Vec::new(),
        }
    }

    /// The vocabulary string as stored ("" for an out-of-range id).
    pub fn token_text(&self, id: u32) -> &str {
        self.tokens.get(id as usize).map_or("", String::as_str)
    }

    /// Lossy UTF-8 of the concatenated [`Tokenizer::token_bytes`] of `ids`. For
    /// sentencepiece vocabularies the `▁` prefix that `encode` adds comes back as a
    /// leading space (nothing is stripped).
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend(self.token_bytes(id, special));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The id of the token whose vocabulary string is exactly `text`.
    pub fn find_token(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// Split `text` on occurrences of special tokens, longest token first (as llama.cpp's
    /// `tokenizer_st_partition`).
    fn partition<'a>(&self, specials: &[(String, u32)], text: &'a str) -> Vec<Fragment<'a>> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Fragment::Text(text)];
        for (special, id) in specials {
            if !text.contains(special.as_str()) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len());
            for frag in frags {
                match frag {
                    Fragment::Text(t) if t.contains(special.as_str()) => {
                        let mut rest = t;
                        while let Some(pos) = rest.find(special.as_str()) {
                            if pos > 0 {
                                next.push(Fragment::Text(&rest[..pos]));
                            }
                            next.push(Fragment::Token(*id));
                            rest = &rest[pos + special.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Fragment::Text(rest));
                        }
                    }
                    other => next.push(other),
                }
            }
            frags = next;
        }
        frags
    }

    fn spm_encode(
        &self,
        spm: &SpmData,
        specials: &[(String, u32)],
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        // A space prefix goes before the first raw fragment and before any raw fragment
        // that follows a special token (llama.cpp's `add_space_prefix` + `is_prev_special`).
        let mut prev_special = true;
        for frag in self.partition(specials, text) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    let mut s = String::with_capacity(t.len() + 4);
                    if prev_special {
                        s.push(' ');
                    }
                    s.push_str(t);
                    let escaped = s.replace(' ', SPM_SPACE);
                    self.spm_tokenize(spm, &escaped, out)?;
                    prev_special = false;
                }
            }
        }
        Ok(())
    }

    /// llama.cpp's SPM tokenization of one raw fragment (already whitespace-escaped).
    fn spm_tokenize(&self, spm: &SpmData, text: &str, out: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        // One symbol per UTF-8 character, linked as a list.
        let mut syms: Vec<SpmSymbol> = Vec::new();
        let char_count = text.chars().count();
        for (i, (start, ch)) in text.char_indices().enumerate() {
            syms.push(SpmSymbol {
                start,
                len: ch.len_utf8(),
                prev: i.checked_sub(1),
                next: (i + 1 < char_count).then_some(i + 1),
            });
        }

        let mut queue = BinaryHeap::new();
        for i in 1..syms.len() {
            self.spm_try_add(spm, text, &syms, i - 1, Some(i), &mut queue);
        }

        while let Some(bigram) = queue.pop() {
            let (l, r) = (bigram.left, bigram.right);
            let (ll, rl) = (syms[l].len, syms[r].len);
            // Skip bigrams whose symbols changed since they were queued.
            if ll == 0 || rl == 0 || ll + rl != bigram.size {
                continue;
            }
            syms[l].len += rl;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(nx) = syms[r].next {
                syms[nx].prev = Some(l);
            }
            if let Some(pv) = syms[l].prev {
                self.spm_try_add(spm, text, &syms, pv, Some(l), &mut queue);
            }
            let nx = syms[l].next;
            self.spm_try_add(spm, text, &syms, l, nx, &mut queue);
        }

        let mut cur = Some(0);
        while let Some(i) = cur {
            let sym = &syms[i];
            let piece = &text[sym.start..sym.start + sym.len];
            if let Some(&id) = self.token_to_id.get(piece) {
                out.push(id);
            } else {
                for &b in piece.as_bytes() {
                    let id = spm.byte_tokens[b as usize].or(spm.unk).ok_or_else(|| {
                        anyhow!(
                            "cannot encode byte 0x{b:02X}: the vocabulary has no <0x{b:02X}> byte token and no unknown token"
                        )
                    })?;
                    out.push(id);
                }
            }
            cur = sym.next;
        }
        Ok(())
    }

    fn spm_try_add(
        &self,
        spm: &SpmData,
        text: &str,
        syms: &[SpmSymbol],
        left: usize,
        right: Option<usize>,
        queue: &mut BinaryHeap<SpmBigram>,
    ) {
        let Some(right) = right else { return };
        let start = syms[left].start;
        let size = syms[left].len + syms[right].len;
        let Some(&id) = self.token_to_id.get(&text[start..start + size]) else {
            return;
        };
        queue.push(SpmBigram {
            left,
            right,
            score: spm.scores[id as usize],
            size,
        });
    }
}

/// A symbol of the SPM merge list: a byte range of the text, linked to its neighbours.
struct SpmSymbol {
    start: usize,
    /// Byte length; 0 once merged into its left neighbour.
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of two adjacent SPM symbols.
struct SpmBigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for SpmBigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for SpmBigram {}

impl PartialOrd for SpmBigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SpmBigram {
    /// Highest score first; on equal scores the leftmost pair first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Build the `tokenizers` pipeline for a byte-level BPE ("gpt2") vocabulary.
fn build_gpt2(spec: &VocabSpec, types: &[i32]) -> Result<tokenizers::Tokenizer> {
    let pre = spec.pre.as_deref();
    let (regex, ignore_merges) = match pre {
        // llama.cpp runs the Falcon3 / Falcon-E vocabularies with the LLaMA-3 split too.
        Some("llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "falcon_e") => {
            (LLAMA3_PRE_REGEX, true)
        }
        None | Some("default" | "gpt-2" | "gpt2") => (GPT2_PRE_REGEX, false),
        Some(other) => bail!(
            "unsupported pre-tokenizer {} (tokenizer.ggml.pre; supported: llama-bpe, llama3, llama-v3, falcon3, falcon_e, default, gpt-2)",
            quoted(other)
        ),
    };

    let vocab: Vocab = spec
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    // Merges whose parts or result are not in the vocabulary can never apply; drop them
    // rather than refusing the whole vocabulary.
    let merges: Vec<(String, String)> = spec
        .merges
        .iter()
        .filter_map(|m| split_merge(m))
        .filter(|(a, b)| {
            vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&format!("{a}{b}"))
        })
        .collect();

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| {
            anyhow!(
                "cannot build the BPE model from the GGUF vocabulary: {}",
                one_line(&e.to_string())
            )
        })?;

    let split = Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| anyhow!("cannot compile the pre-tokenizer regex: {e}"))?;
    let pre_tokenizer = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ]);

    let mut hf = tokenizers::Tokenizer::new(bpe);
    hf.with_pre_tokenizer(Some(pre_tokenizer));
    hf.with_decoder(Some(ByteLevel::default()));

    let added: Vec<AddedToken> = spec
        .tokens
        .iter()
        .zip(types)
        .filter(|(t, &ty)| {
            !t.is_empty() && (ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED)
        })
        .map(|(t, &ty)| AddedToken::from(t.clone(), ty == TOKEN_TYPE_CONTROL).normalized(false))
        .collect();
    hf.add_tokens(&added);
    Ok(hf)
}

/// Split a GGUF merge "a b" at its first space after the first character (llama.cpp rule).
fn split_merge(m: &str) -> Option<(String, String)> {
    let first_len = m.chars().next()?.len_utf8();
    let pos = m[first_len..].find(' ')? + first_len;
    Some((m[..pos].to_string(), m[pos + 1..].to_string()))
}

/// Gather what the SPM tokenizer needs.
fn build_spm(
    spec: &VocabSpec,
    types: &[i32],
    token_to_id: &HashMap<String, u32>,
) -> Result<SpmData> {
    let n = spec.tokens.len();
    let scores = if spec.scores.is_empty() {
        vec![0.0; n]
    } else if spec.scores.len() == n {
        spec.scores.clone()
    } else {
        bail!(
            "tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {n}",
            spec.scores.len()
        );
    };
    let byte_tokens = (0..=255u8)
        .map(|b| {
            token_to_id
                .get(&format!("<0x{b:02X}>"))
                .copied()
                .or_else(|| {
                    if b.is_ascii() {
                        token_to_id.get(&char::from(b).to_string()).copied()
                    } else {
                        None
                    }
                })
        })
        .collect();
    let unk = types
        .iter()
        .position(|&t| t == TOKEN_TYPE_UNKNOWN)
        .map(|i| i as u32)
        .or_else(|| token_to_id.get("<unk>").copied());
    let mut specials: Vec<(String, u32)> = spec
        .tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (t, &ty))| {
            !t.is_empty() && (ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED)
        })
        .map(|(i, (t, _))| (t.clone(), i as u32))
        .collect();
    specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
    Ok(SpmData {
        scores,
        byte_tokens,
        unk,
        specials,
    })
}

/// Parse a sentencepiece byte token `<0xXX>`.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Whether GPT-2's byte-to-unicode table maps byte `b` to the character of the same value.
const fn byte_is_printable(b: u32) -> bool {
    (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)
}

/// The bytes that GPT-2's table maps, in increasing order, to U+0100, U+0101, ...
const SHIFTED_BYTES: [u8; 68] = {
    let mut out = [0u8; 68];
    let mut k = 0;
    let mut b = 0u32;
    while b < 256 {
        if !byte_is_printable(b) {
            out[k] = b as u8;
            k += 1;
        }
        b += 1;
    }
    out
};

/// The byte a GPT-2 byte-to-unicode character stands for.
fn unicode_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 {
        return byte_is_printable(cp).then_some(cp as u8);
    }
    SHIFTED_BYTES.get((cp - 256) as usize).copied()
}

/// Decode a GPT-2 byte-level token string to its bytes. Characters outside the
/// byte-to-unicode alphabet are kept as their UTF-8 bytes.
fn byte_level_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match unicode_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

/// Streaming UTF-8 safe decoder: push token bytes, get back only complete UTF-8 text;
/// holds incomplete multi-byte sequences until completed (invalid sequences are emitted
/// as U+FFFD once they can no longer become valid).
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add bytes; returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is valid UTF-8 by construction.
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            rest = &after[bad..];
                        }
                        None => {
                            // An incomplete sequence at the end: wait for more bytes.
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let start = self.pending.len() - keep;
        self.pending.drain(..start);
        out
    }

    /// Emit whatever is pending (an incomplete sequence becomes U+FFFD) and reset.
    pub fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small hand-made sentencepiece vocabulary.
    fn spm_spec() -> VocabSpec {
        let mut tokens: Vec<(&str, i32, f32)> = vec![
            ("<unk>", TOKEN_TYPE_UNKNOWN, 0.0),
            ("<s>", TOKEN_TYPE_CONTROL, 0.0),
            ("</s>", TOKEN_TYPE_CONTROL, 0.0),
        ];
        let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        for b in &bytes {
            tokens.push((b.as_str(), TOKEN_TYPE_BYTE, 0.0));
        }
        // ids from 259 on
        let normal: &[(&str, f32)] = &[
            ("\u{2581}", -1.0),      // 259
            ("h", -2.0),             // 260
            ("e", -2.0),             // 261
            ("l", -2.0),             // 262
            ("o", -2.0),             // 263
            ("w", -2.0),             // 264
            ("r", -2.0),             // 265
            ("d", -2.0),             // 266
            ("he", -3.0),            // 267
            ("ll", -1.5),            // 268
            ("\u{2581}h", -5.0),     // 269
            ("llo", -1.0),           // 270
            ("hello", -0.5),         // 271
            ("\u{2581}hello", -0.1), // 272
            ("\u{2581}w", -4.0),     // 273
            ("or", -3.0),            // 274
            ("ld", -3.5),            // 275
            ("\u{2581}wor", -2.5),   // 276
            ("a", -2.0),             // 277
            ("aa", -1.0),            // 278
            ("<tool>", 0.0),         // 279 user-defined
        ];
        for (t, s) in normal {
            tokens.push((t, TOKEN_TYPE_NORMAL, *s));
        }
        let n = tokens.len();
        tokens[n - 1].1 = TOKEN_TYPE_USER_DEFINED;
        VocabSpec {
            model: "llama".into(),
            pre: None,
            tokens: tokens.iter().map(|t| t.0.to_string()).collect(),
            token_types: tokens.iter().map(|t| t.1).collect(),
            merges: vec![],
            scores: tokens.iter().map(|t| t.2).collect(),
            bos: Some(1),
            eos: Some(2),
            eot: None,
            add_bos: true,
        }
    }

    fn byte_id(b: u8) -> u32 {
        3 + b as u32
    }

    #[test]
    fn tokenizer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Tokenizer>();
        check::<StreamDecoder>();
    }

    #[test]
    fn spm_merges_by_score() {
        let tok = Tokenizer::from_spec(&spm_spec()).unwrap();
        // "▁hello": best merges ll(-1.5) -> llo(-1.0) ... -> ▁hello.
        assert_eq!(tok.encode("hello", false).unwrap(), vec![272]);
        assert_eq!(tok.encode("hello", true).unwrap(), vec![1, 272]);
        // "▁world": merges happen in score order or(-3), ld(-3.5), ▁w(-4), then the
        // newly possible ▁wor(-2.5); "▁world" is not in the vocabulary.
        assert_eq!(
            tok.encode("hello world", false).unwrap(),
            vec![272, 276, 275]
        );
    }

    #[test]
    fn spm_ties_merge_leftmost() {
        let tok = Tokenizer::from_spec(&spm_spec()).unwrap();
        // "▁aaa": "aa" can form at positions 1 and 2 with the same score; leftmost wins.
        assert_eq!(tok.encode("aaa", false).unwrap(), vec![259, 278, 277]);
    }

    #[test]
    fn spm_byte_fallback_and_decode() {
        let tok = Tokenizer::from_spec(&spm_spec()).unwrap();
        let ids = tok.encode("hé", false).unwrap();
        assert_eq!(ids, vec![269, byte_id(0xC3), byte_id(0xA9)]);
        assert_eq!(tok.decode(&ids, false), " hé");
        assert_eq!(tok.token_bytes(byte_id(0x0A), false), vec![0x0A]);
    }

    #[test]
    fn spm_special_tokens_in_text() {
        let tok = Tokenizer::from_spec(&spm_spec()).unwrap();
        let ids = tok.encode("hello</s>hello<tool>", true).unwrap();
        // After a control token the next fragment gets the space prefix again.
        assert_eq!(ids, vec![1, 272, 2, 272, 279]);
        assert_eq!(tok.decode(&ids, false), " hello hello<tool>");
        assert_eq!(tok.decode(&ids, true), "<s> hello</s> hello<tool>");
        assert!(tok.is_eog(2));
        assert!(!tok.is_eog(272));
        // Without parse_special, control texts are plain text; user-defined
        // tokens (<tool>) are still matched.
        let plain = tok
            .encode_with("hello</s>hello<tool>", false, false)
            .unwrap();
        assert!(!plain.contains(&2));
        assert_eq!(plain.last(), Some(&279));
        assert_eq!(tok.decode(&plain, false), " hello</s>hello<tool>");
    }

    #[test]
    fn spm_empty_text() {
        let tok = Tokenizer::from_spec(&spm_spec()).unwrap();
        assert_eq!(tok.encode("", true).unwrap(), vec![1]);
        assert!(tok.encode("", false).unwrap().is_empty());
    }

    #[test]
    fn out_of_range_ids_do_not_panic() {
        let tok = Tokenizer::from_spec(&spm_spec()).unwrap();
        assert!(tok.token_bytes(u32::MAX, true).is_empty());
        assert_eq!(tok.token_text(100_000), "");
        assert!(!tok.is_eog(u32::MAX));
        assert_eq!(tok.decode(&[u32::MAX, 272], false), " hello");
    }

    #[test]
    fn spec_errors_are_clear() {
        let mut spec = spm_spec();
        spec.model = "rwkv".into();
        let err = Tokenizer::from_spec(&spec).unwrap_err().to_string();
        assert!(err.contains("rwkv"), "{err}");

        let mut spec = spm_spec();
        spec.bos = Some(10_000);
        let err = Tokenizer::from_spec(&spec).unwrap_err().to_string();
        assert!(err.contains("10000"), "{err}");

        let mut spec = spm_spec();
        spec.bos = None;
        let tok = Tokenizer::from_spec(&spec).unwrap();
        assert!(tok.encode("hi", true).is_err());
    }

    /// A tiny byte-level BPE vocabulary: all 256 byte symbols plus a few merges.
    fn gpt2_spec(pre: Option<&str>) -> VocabSpec {
        let mut tokens: Vec<String> = Vec::new();
        let mut k = 0;
        for b in 0u32..256 {
            let c = if byte_is_printable(b) {
                char::from_u32(b).unwrap()
            } else {
                k += 1;
                char::from_u32(256 + k - 1).unwrap()
            };
            tokens.push(c.to_string());
        }
        for t in ["Ġt", "he", "Ġthe", "Ġthere"] {
            tokens.push(t.to_string());
        }
        tokens.push("<|eot_id|>".into());
        let mut types = vec![TOKEN_TYPE_NORMAL; tokens.len()];
        *types.last_mut().unwrap() = TOKEN_TYPE_CONTROL;
        VocabSpec {
            model: "gpt2".into(),
            pre: pre.map(str::to_string),
            tokens,
            token_types: types,
            merges: vec!["Ġ t".into(), "h e".into(), "Ġt he".into()],
            scores: vec![],
            bos: None,
            eos: Some(260),
            eot: None,
            add_bos: false,
        }
    }

    #[test]
    fn gpt2_tiny_vocab() {
        let tok = Tokenizer::from_spec(&gpt2_spec(Some("llama-bpe"))).unwrap();
        let ids = tok.encode("a the<|eot_id|>", false).unwrap();
        assert_eq!(ids, vec![b'a' as u32, 258, 260]);
        assert_eq!(tok.decode(&ids, false), "a the");
        assert_eq!(tok.decode(&ids, true), "a the<|eot_id|>");
        assert!(tok.is_eog(260));
        // A byte that maps outside Latin-1 decodes back to itself.
        assert_eq!(tok.token_bytes(b'\n' as u32, false), b"\n");
        // "Ġthere" is in the vocabulary but not reachable by merges: with ignore_merges
        // (llama-bpe) it is taken whole.
        assert_eq!(tok.encode(" there", false).unwrap(), vec![259]);
        let tok = Tokenizer::from_spec(&gpt2_spec(Some("gpt-2"))).unwrap();
        assert_eq!(
            tok.encode(" there", false).unwrap(),
            vec![258, b'r' as u32, b'e' as u32]
        );
    }

    #[test]
    fn gpt2_unknown_pre_is_an_error() {
        let err = Tokenizer::from_spec(&gpt2_spec(Some("qwen2")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"qwen2\""), "{err}");
    }

    /// Deterministic pseudo-random strings over a mixed alphabet.
    fn random_texts() -> Vec<String> {
        let pool: Vec<char> = "ab helowrd\n\t  'sS12345.,!?éÜ東京🚀\u{0301}\r-_"
            .chars()
            .collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..200)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let len = (state % 24) as usize;
                (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        pool[(state % pool.len() as u64) as usize]
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn round_trip_random_texts() {
        let spm = Tokenizer::from_spec(&spm_spec()).unwrap();
        let bpe = Tokenizer::from_spec(&gpt2_spec(Some("llama-bpe"))).unwrap();
        let gpt2 = Tokenizer::from_spec(&gpt2_spec(None)).unwrap();
        for text in random_texts() {
            let ids = spm.encode(&text, true).unwrap();
            let expected = if text.is_empty() {
                String::new()
            } else {
                format!(" {text}")
            };
            assert_eq!(spm.decode(&ids, false), expected, "{text:?}");
            for tok in [&bpe, &gpt2] {
                let ids = tok.encode(&text, false).unwrap();
                assert_eq!(tok.decode(&ids, false), text, "{text:?}");
            }
        }
    }

    #[test]
    fn byte_to_unicode_roundtrip() {
        assert_eq!(unicode_to_byte('Ġ'), Some(b' '));
        assert_eq!(unicode_to_byte('Ċ'), Some(b'\n'));
        assert_eq!(unicode_to_byte('ĉ'), Some(b'\t'));
        assert_eq!(unicode_to_byte('A'), Some(b'A'));
        assert_eq!(unicode_to_byte('\u{00AD}'), None);
        assert_eq!(unicode_to_byte('Ń'), Some(0xAD));
        assert_eq!(unicode_to_byte('東'), None);
    }

    #[test]
    fn split_merge_rule() {
        assert_eq!(split_merge("a b"), Some(("a".into(), "b".into())));
        assert_eq!(split_merge("Ġ Ġ"), Some(("Ġ".into(), "Ġ".into())));
        assert_eq!(split_merge("ab"), None);
    }

    #[test]
    fn stream_decoder_holds_incomplete_sequences() {
        let text = "a東🚀b";
        let bytes = text.as_bytes();
        let mut dec = StreamDecoder::new();
        let mut out = String::new();
        let mut empties = 0;
        for b in bytes {
            let s = dec.push(std::slice::from_ref(b));
            if s.is_empty() {
                empties += 1;
            }
            out.push_str(&s);
        }
        out.push_str(&dec.flush());
        assert_eq!(out, text);
        // 東 is 3 bytes, 🚀 is 4: 2 + 3 pushes returned nothing.
        assert_eq!(empties, 5);
    }

    #[test]
    fn stream_decoder_invalid_bytes() {
        let mut dec = StreamDecoder::new();
        // A stray continuation byte can never become valid: replaced at once.
        assert_eq!(dec.push(&[b'x', 0x80, b'y']), "x\u{FFFD}y");
        // A lead byte followed by a non-continuation byte.
        assert_eq!(dec.push(&[0xE6]), "");
        assert_eq!(dec.push(b"z"), "\u{FFFD}z");
        // An incomplete sequence at the end is flushed as U+FFFD.
        assert_eq!(dec.push(&[0xF0, 0x9F]), "");
        assert_eq!(dec.flush(), "\u{FFFD}");
        assert_eq!(dec.flush(), "");
    }
}

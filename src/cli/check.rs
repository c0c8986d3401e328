//! `tern check`: compare tern's logits with a reference bundle (or a live
//! bitnet.cpp), and write bundles of tern's own logits (`--dump`).

use super::{set_threads, ModelArgs};
use crate::check::{
    bitnet_cpp_source, check_prompt, head_type, head_type_note, table_header, table_row, verdict,
    write_bundle, Bundle, Criteria, DumpPrompt, Evaluation, LogitSource, PromptReport, RefPrompt,
    TernSource, BITNET_CPP, GREEDY_TOKENS, NO_BITNET_CPP,
};
use crate::metrics::Thresholds;
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Reference bundle: a directory of <prompt>.tokens.json + <prompt>.logits.f32 (+ greedy.json).
    #[arg(long, value_name = "DIR")]
    pub reference: Option<PathBuf>,
    /// Compare with bitnet.cpp's own engine run in-process on the same tokens (needs a tern built with the `bitnet-cpp` feature).
    #[arg(long = "bitnet-cpp")]
    pub bitnet_cpp: bool,
    /// Prompt text (repeatable), for --dump or --bitnet-cpp; named prompt1, prompt2, … unless --name is given.
    #[arg(
        short = 'p',
        long = "prompt",
        value_name = "TEXT",
        conflicts_with = "reference"
    )]
    pub prompts: Vec<String>,
    /// Name of each -p prompt, in order (repeatable).
    #[arg(long = "name", value_name = "NAME", requires = "prompts")]
    pub names: Vec<String>,
    /// Write tern's own logits (and greedy continuations) as a reference bundle in DIR.
    #[arg(long, value_name = "DIR")]
    pub dump: Option<PathBuf>,
    /// Overwrite existing files in the --dump directory.
    #[arg(long, requires = "dump")]
    pub force: bool,
    /// Fail a prompt whose relative RMS error (worst position) is above this.
    #[arg(long = "max-rel-rms", value_name = "X", default_value_t = Thresholds::default().max_rel_rms)]
    pub max_rel_rms: f64,
    /// Fail a prompt whose mean KL divergence (nats) is above this.
    #[arg(long = "max-kl", value_name = "X", default_value_t = Thresholds::default().mean_kl)]
    pub max_kl: f64,
    /// Fail a prompt whose top-1 agreement is below this.
    #[arg(long = "min-top1", value_name = "X", default_value_t = Thresholds::default().min_top1)]
    pub min_top1: f64,
    /// Also fail a prompt whose greedy agreement (fraction of matching ids) is below this (default: greedy is reported only).
    #[arg(long = "min-greedy", value_name = "X")]
    pub min_greedy: Option<f64>,
    /// Keep tern's KV cache in f32 instead of f16.
    #[arg(long = "kv-f32")]
    pub kv_f32: bool,
}

/// One prompt to run: its tokens and, when checking, its reference.
struct Job {
    name: String,
    text: Option<String>,
    tokens: Vec<u32>,
    reference: Option<RefPrompt>,
}

fn criteria(a: &Args) -> Result<Criteria> {
    let check = |flag: &str, x: f64, unit: bool| -> Result<()> {
        if !x.is_finite() || x < 0.0 || (unit && x > 1.0) {
            bail!(
                "{} must be a number {}, got {}",
                flag,
                if unit { "from 0 to 1" } else { "≥ 0" },
                x
            );
        }
        Ok(())
    };
    check("--max-rel-rms", a.max_rel_rms, false)?;
    check("--max-kl", a.max_kl, false)?;
    check("--min-top1", a.min_top1, true)?;
    if let Some(g) = a.min_greedy {
        check("--min-greedy", g, true)?;
    }
    Ok(Criteria {
        thresholds: Thresholds {
            max_rel_rms: a.max_rel_rms,
            mean_kl: a.max_kl,
            min_top1: a.min_top1,
        },
        min_greedy: a.min_greedy,
    })
}

pub fn run(a: Args) -> Result<()> {
    if a.bitnet_cpp && !BITNET_CPP {
        bail!("{}", NO_BITNET_CPP);
    }
    let crit = criteria(&a)?;
    if a.reference.is_none() && a.prompts.is_empty() {
        bail!(
            "give --reference DIR (a reference bundle), or -p TEXT with --bitnet-cpp or --dump DIR"
        );
    }
    if a.reference.is_none() && !a.bitnet_cpp && a.dump.is_none() {
        bail!("-p prompts have no reference to check against: add --dump DIR to write them as a bundle, or --bitnet-cpp");
    }
    if !a.names.is_empty() && a.names.len() != a.prompts.len() {
        bail!(
            "{} --name for {} -p prompts: give one name per prompt, or none",
            a.names.len(),
            a.prompts.len()
        );
    }
    let bundle = match &a.reference {
        Some(dir) => Some(Bundle::load(dir)?),
        None => None,
    };
    // Prompt names for -p, checked before the model is loaded.
    let names: Vec<String> = if a.names.is_empty() {
        (1..=a.prompts.len())
            .map(|i| format!("prompt{}", i))
            .collect()
    } else {
        a.names.clone()
    };
    for n in &names {
        crate::check::validate_name(n)?;
    }

    set_threads(a.model.threads)?;
    let model = a.model.load()?;
    let nv = model.hp.n_vocab;
    if let Some(b) = &bundle {
        if let Some(p) = b.prompts.iter().find(|p| p.vocab != nv) {
            bail!(
                "vocabulary mismatch: reference {} was made with a vocabulary of {} ({}.tokens.json), the model has {}: is it the reference of another model?",
                b.dir.display(),
                p.vocab,
                p.name,
                nv
            );
        }
    }

    let mut jobs: Vec<Job> = Vec::new();
    match &bundle {
        Some(b) => {
            for p in &b.prompts {
                jobs.push(Job {
                    name: p.name.clone(),
                    text: p.text.clone(),
                    tokens: p.tokens.clone(),
                    reference: if a.bitnet_cpp { None } else { Some(p.clone()) },
                });
            }
        }
        None => {
            for (name, text) in names.iter().zip(&a.prompts) {
                let tokens = model.tokenizer.encode(text, model.tokenizer.add_bos())?;
                if tokens.is_empty() {
                    bail!("prompt {} ({:?}) has no tokens", name, text);
                }
                jobs.push(Job {
                    name: name.clone(),
                    text: Some(text.clone()),
                    tokens,
                    reference: None,
                });
            }
        }
    }

    // Refuse an occupied dump directory before any work is done.
    if let (Some(dir), false) = (&a.dump, a.force) {
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        if let Some(p) = crate::check::dump_paths(dir, &names)
            .iter()
            .find(|p| p.exists())
        {
            bail!("{} already exists (use --force to overwrite)", p.display());
        }
    }

    let mut live: Option<Box<dyn LogitSource>> = None;
    if a.bitnet_cpp {
        let Some(path) = a.model.model.as_deref() else {
            bail!("--bitnet-cpp needs -m MODEL.gguf (bitnet.cpp loads the file itself)");
        };
        let src = bitnet_cpp_source(path)?;
        if src.n_vocab() != nv {
            bail!(
                "vocabulary mismatch: {} reports {} tokens, tern {}",
                src.label(),
                src.n_vocab(),
                nv
            );
        }
        live = Some(src);
    }
    let checking = bundle.is_some() || live.is_some();

    let model_name = match &a.model.model {
        Some(p) => p.display().to_string(),
        None => format!("built-in {}", super::DEFAULT_MODEL_NAME),
    };
    let against = match (&live, &a.reference) {
        (Some(src), _) => format!("{} (live)", src.label()),
        (None, Some(dir)) => dir.display().to_string(),
        (None, None) => String::new(),
    };
    let width = jobs.iter().map(|j| j.name.len()).max().unwrap_or(0).max(6);
    if checking {
        let t = &crit.thresholds;
        println!("tern check: {} against {}", model_name, against);
        println!(
            "thresholds: rel RMS ≤ {} (worst position), mean KL ≤ {}, top-1 ≥ {}; greedy agreement {}",
            t.max_rel_rms,
            t.mean_kl,
            t.min_top1,
            match crit.min_greedy {
                Some(g) => format!("≥ {}", g),
                None => "reported only".to_string(),
            }
        );
        println!("{}", table_header(width));
        // A live bitnet.cpp reads the same file, so only bundles can differ.
        let head = head_type(&model);
        if let (Some(b), None) = (&bundle, &live) {
            if let Some(n) = head_type_note(head, b.head_type.as_deref()) {
                eprintln!("tern check: note: {}", n);
            }
        }
    }

    let mut tern = TernSource::new(&model, a.kv_f32);
    let mut reports: Vec<PromptReport> = Vec::new();
    let mut evals: Vec<Evaluation> = Vec::new();
    for job in &mut jobs {
        if let Some(text) = &job.text {
            if let Ok(t) = model.tokenizer.encode(text, model.tokenizer.add_bos()) {
                if t != job.tokens {
                    eprintln!(
                        "tern: note: {}: tern tokenizes the prompt text differently from the reference tokens (the reference tokens are used)",
                        job.name
                    );
                }
            }
        }
        if let Some(src) = live.as_mut() {
            let ev = src.evaluate(&job.tokens, GREEDY_TOKENS)?;
            job.reference = Some(RefPrompt::from_evaluation(
                &job.name,
                job.text.clone(),
                job.tokens.clone(),
                nv,
                ev,
            ));
        }
        match &job.reference {
            Some(r) => {
                let (rep, ev) = check_prompt(&mut tern, r, &crit)?;
                println!("{}", table_row(&rep, width));
                reports.push(rep);
                evals.push(ev);
            }
            None => evals.push(tern.evaluate(&job.tokens, GREEDY_TOKENS)?),
        }
    }

    if checking {
        for r in reports.iter().filter(|r| !r.passed()) {
            println!("  {}: {}", r.name, r.failures.join("; "));
        }
        println!("{}", verdict(&reports));
    }

    if let Some(dir) = &a.dump {
        let prompts: Vec<DumpPrompt> = jobs
            .iter()
            .zip(&evals)
            .map(|(j, ev)| DumpPrompt {
                name: &j.name,
                head_type: head_type(&model),
                text: j.text.as_deref(),
                tokens: &j.tokens,
                vocab: nv,
                eval: ev,
            })
            .collect();
        write_bundle(dir, &prompts, a.force)?;
        eprintln!(
            "tern check: wrote tern's logits for {} prompt{} to {}",
            prompts.len(),
            if prompts.len() == 1 { "" } else { "s" },
            dir.display()
        );
    }

    if reports.iter().any(|r| !r.passed()) {
        // The FAIL verdict is on stdout already: exit 1 without repeating it.
        return Err(super::pipe::Reported.into());
    }
    Ok(())
}

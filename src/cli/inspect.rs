use crate::gguf::GgufFile;
use crate::quant::{i2s, tq, GgmlType};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// GGUF file.
    pub file: PathBuf,
}

/// (scale, % zeros) of a ternary tensor, or None.
fn ternary_stats(g: &GgufFile, t: &crate::gguf::TensorInfo) -> Option<(String, f64)> {
    let data = g.tensor_data(t);
    let n = t.n_elements_usize();
    let (codes, scale) = match t.ty {
        GgmlType::I2S => {
            let s = i2s::validate(data, n).ok()?;
            (i2s::decode_codes(data, n), format!("{:.6e}", s))
        }
        GgmlType::TQ2_0 | GgmlType::TQ1_0 => {
            let (c, d) = if t.ty == GgmlType::TQ2_0 {
                tq::decode_tq2_0(data).ok()?
            } else {
                tq::decode_tq1_0(data).ok()?
            };
            let mut ds: Vec<f32> = d.into_iter().filter(|&x| x != 0.0).collect();
            ds.dedup();
            let s = match ds.as_slice() {
                [] => "0".to_string(),
                [x] => format!("{:.6e}", x),
                _ => format!("{} block scales", ds.len()),
            };
            (c, s)
        }
        _ => return None,
    };
    let zeros = codes.iter().filter(|&&c| c == 0).count();
    Some((scale, 100.0 * zeros as f64 / n.max(1) as f64))
}

pub fn run(a: Args) -> Result<()> {
    super::refuse_hf_path(&a.file)?;
    let g = GgufFile::open(&a.file)?;
    println!(
        "{}: GGUF v{}, {} metadata keys, {} tensors, {} bytes",
        a.file.display(),
        g.version,
        g.kv.len(),
        g.tensors.len(),
        g.file_size()
    );
    println!();
    // Keys and tensor names come from the file: shown bare when plain,
    // else escaped and cut short (a crafted name cannot reach the terminal).
    for (k, v) in &g.kv {
        println!("  {:<48} {}", crate::untrusted::name(k), v.display_short());
    }
    println!();
    println!(
        "  {:<32} {:>6} {:>18} {:>12} {:>14} {:>8}",
        "tensor", "type", "dims", "bytes", "scale", "zeros"
    );
    for t in &g.tensors {
        let dims = format!("{:?}", t.dims);
        let (s, z) = match ternary_stats(&g, t) {
            Some((s, z)) => (s, format!("{:.1}%", z)),
            None => (String::new(), String::new()),
        };
        println!(
            "  {:<32} {:>6} {:>18} {:>12} {:>14} {:>8}",
            crate::untrusted::name(&t.name),
            t.ty.name(),
            dims,
            t.size,
            s,
            z
        );
    }
    Ok(())
}

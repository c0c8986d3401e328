use std::time::Instant;
use tern::model::forward::Context;
use tern::model::Model;
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let m = Model::load(std::path::Path::new(&args[1]))?;
    let nt: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(nt).build()?;
    pool.install(|| -> anyhow::Result<()> {
        for rep in 0..12 {
            let mut ctx = Context::new(&m, 512, false);
            let mut ts = Vec::new();
            for p in 0..128u32 {
                let t0 = Instant::now();
                ctx.eval(&[100 + p], false)?;
                ts.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            let mean = ts.iter().sum::<f64>() / ts.len() as f64;
            let mut s = ts.clone();
            s.sort_by(f64::total_cmp);
            println!(
                "rep {rep}: mean {mean:.2} min {:.2} med {:.2} p90 {:.2} max {:.2} first5 {:?}",
                s[0],
                s[64],
                s[115],
                s[127],
                &ts[..5]
                    .iter()
                    .map(|x| (x * 100.0).round() / 100.0)
                    .collect::<Vec<_>>()
            );
        }
        Ok(())
    })?;
    Ok(())
}

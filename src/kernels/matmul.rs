//! Threading of the matrix products, shared by every weight format: work
//! is split over output rows on the current rayon pool (the global one, or
//! the one a caller `install`ed), and per-token int8 activations.
//!
//! Every output value is computed by one kernel call in a fixed order, so
//! results do not depend on the thread count. One token (generation)
//! splits the rows into a few equal chunks per thread ([`even_chunk`]),
//! each streaming its weights once; many tokens (prompt) use smaller row
//! blocks whose weights stay in cache while every token passes over them.
//! Per-call scratch is thread-local and reused.

use super::memory::LineAligned;
use super::Kernel;
use super::GROUP;
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

/// A batch of activation rows quantized to int8 per row (BitLinear).
#[derive(Default, Debug, Clone)]
pub struct QBatch {
    /// `n · k` values, row-major, from a cache line on.
    pub q: LineAligned<i8>,
    /// Per-row scale `a` (`q ≈ x·a`).
    pub a: Vec<f32>,
    /// Per-row Σq.
    pub sums: Vec<i32>,
    /// Row length.
    pub k: usize,
}

/// Quantize `x` (rows of `k`) per row; see [`Kernel::quantize_act`].
pub fn quantize_batch(kern: &Kernel, x: &[f32], k: usize) -> QBatch {
    let mut qb = QBatch::default();
    quantize_into(kern, x, k, &mut qb);
    qb
}

/// [`quantize_batch`] into an existing batch (no allocation once it is large enough).
pub fn quantize_into(kern: &Kernel, x: &[f32], k: usize, qb: &mut QBatch) {
    assert!(
        k > 0 && x.len().is_multiple_of(k),
        "activations are not whole rows of {}",
        k
    );
    let n = x.len() / k;
    qb.k = k;
    qb.q.resize(n * k);
    qb.a.resize(n, 0.0);
    qb.sums.resize(n, 0);
    let rows = qb.q.chunks_mut(k).zip(x.chunks(k));
    let scales = qb.a.iter_mut().zip(qb.sums.iter_mut());
    if n < 4 || rayon::current_num_threads() == 1 {
        for ((q, xr), (a, s)) in rows.zip(scales) {
            (*a, *s) = kern.quantize_act(xr, q);
        }
    } else {
        qb.q.par_chunks_mut(k)
            .zip(x.par_chunks(k))
            .zip(qb.a.par_iter_mut().zip(qb.sums.par_iter_mut()))
            .for_each(|((q, xr), (a, s))| (*a, *s) = kern.quantize_act(xr, q));
    }
}

thread_local! {
    static SCRATCH_I32: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One product of a threaded batch: `n` token rows of `rows` outputs each.
pub struct Job<'o> {
    pub out: &'o mut [f32],
    pub rows: usize,
}

/// Split the outputs of several products (each `n` rows of `job.rows`
/// values, token-major) into tasks of a few output rows and run
/// `f(job, first_row, outs)` for every task in one parallel region on the
/// pool, `outs[t]` being token t's slice of the task's rows. Products that
/// share their activations (Q, K and V; gate and up) thus cost one
/// fork-join, not one each.
pub fn par_rows<F>(jobs: Vec<Job<'_>>, n: usize, f: F)
where
    F: Fn(usize, usize, &mut [&mut [f32]]) + Sync,
{
    let total: usize = jobs.iter().map(|j| j.rows).sum();
    for j in &jobs {
        assert_eq!(j.out.len(), n * j.rows, "output size");
    }
    if n == 0 || total == 0 {
        return;
    }
    let mut chunk = chunk_rows(total, n, 64);
    if n == 1 {
        let rows: Vec<usize> = jobs.iter().map(|j| j.rows).collect();
        chunk = even_chunk(&rows, chunk, rayon::current_num_threads());
    }
    let mut tasks: Vec<(usize, usize, Vec<&mut [f32]>)> = Vec::new();
    for (ji, job) in jobs.into_iter().enumerate() {
        let ntasks = job.rows.div_ceil(chunk);
        let first = tasks.len();
        for t in 0..ntasks {
            tasks.push((ji, t * chunk, Vec::with_capacity(n)));
        }
        for row in job.out.chunks_mut(job.rows) {
            let mut rest = row;
            for t in &mut tasks[first..] {
                let len = chunk.min(rest.len());
                let (a, b) = rest.split_at_mut(len);
                t.2.push(a);
                rest = b;
            }
        }
    }
    if tasks.len() <= 1 || rayon::current_num_threads() == 1 {
        for (ji, m0, mut outs) in tasks {
            f(ji, m0, &mut outs);
        }
    } else {
        tasks
            .into_par_iter()
            .for_each(|(ji, m0, mut outs)| f(ji, m0, &mut outs));
    }
}

/// Run `f` on a worker of the current rayon pool while the pool's other
/// workers poll for work instead of parking, until `f` returns.
///
/// A forward pass is a chain of short parallel regions (five per layer,
/// 50–400 µs each for one token at the 2B-4T shapes) separated by a few
/// µs of serial work. Between them rayon's idle workers yield, then park;
/// a parked worker took ~60 µs to wake on the 2-core Intel VM (a
/// `rayon::join` after 50 µs of serial work cost 110 µs, not 50), which
/// the next region waits for. Here `threads - 1` polling jobs are queued
/// for the pass (as ggml's threads spin between the ops of one graph):
/// each runs whatever the regions queue (`rayon::yield_now`), spins
/// otherwise, and ends when `f` does. A worker busy elsewhere (another
/// pass, or blocked) simply never takes one, and a polling job the leader
/// finds itself returns at once, so nothing waits on every worker. Run
/// from outside the pool, `f` moves onto a worker (as `rayon::scope`
/// does), so its regions are not injected from outside and waited for
/// through the OS either.
///
/// With one thread, `f` just runs.
pub fn with_busy_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    if threads == 1 {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        let leader = rayon::current_thread_index();
        let done = &done;
        for _ in 1..threads {
            s.spawn(move |_| {
                // The leader sets `done`: it must not poll for it.
                if rayon::current_thread_index() == leader {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let r = f();
        done.store(true, Ordering::Release);
        r
    })
}

/// Output rows per task: a few chunks per thread for one token (each
/// streams its weights once; several per thread balance a busy core),
/// blocks of at most `max_rows` for many tokens. A multiple of 4 (the
/// ternary row group).
pub fn chunk_rows(rows: usize, n: usize, max_rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let c = if n == 1 {
        rows.div_ceil(threads * 4)
    } else {
        rows.div_ceil(threads * 8).min(max_rows)
    };
    c.max(1).next_multiple_of(GROUP)
}

/// For one token: the largest task size `c` in `chunk / 2 ..= chunk` (a
/// multiple of [`GROUP`]) that cuts every product's `rows` into whole tasks
/// and gives a task count that is a multiple of `threads`, else `chunk`.
///
/// With `chunk` alone the products of a region can end in short tail
/// tasks (Q, K and V of the 2B-4T shapes at two threads: 480-row tasks,
/// then a 160-row tail for each), so one thread ends its share early and
/// waits. Here Q, K and V take 320-row tasks (8 + 2 + 2). Measured with
/// `examples/tg_profile` on the Intel Xeon VM, two threads, the same
/// binary with and without it in two alternated rounds: Q·K·V 139–141 →
/// 123 µs per layer, decode step 35.0–35.5 → 34.4–34.5 ms (Q6_K file);
/// the other regions already split evenly (output and down 8 × 320 rows,
/// gate·up 8 × 1728).
pub fn even_chunk(rows: &[usize], chunk: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    let mut c = chunk - chunk % GROUP;
    // At most 64 candidates: the search stays negligible beside a region.
    let lowest = (chunk / 2).max(GROUP).max(c.saturating_sub(64 * GROUP));
    while c >= lowest {
        let tasks: usize = rows.iter().map(|&r| r / c).sum();
        if rows.iter().all(|&r| r % c == 0) && tasks.is_multiple_of(threads) {
            return c;
        }
        c -= GROUP;
    }
    chunk
}

/// Run `run(buf)` producing `n × len` integers token-major in thread-local
/// scratch, then `finish(buf)`.
pub fn with_i32<R>(len: usize, run: impl FnOnce(&mut [i32]) -> R) -> R {
    SCRATCH_I32.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0);
        }
        run(&mut s[..len])
    })
}

/// Run a float product `run(buf)` producing `n × len` values token-major
/// and copy them into the per-token slices `outs`; with one token it
/// writes into the output directly.
pub fn float_block(n: usize, len: usize, outs: &mut [&mut [f32]], run: impl FnOnce(&mut [f32])) {
    if n == 1 {
        run(outs[0]);
        return;
    }
    SCRATCH_F32.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < n * len {
            s.resize(n * len, 0.0);
        }
        run(&mut s[..n * len]);
        for (t, o) in outs.iter_mut().enumerate() {
            o.copy_from_slice(&s[t * len..(t + 1) * len]);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    }

    /// `f` runs on a worker of the pool, its regions use every thread, and
    /// the polling workers stop when it returns (or the call would hang).
    #[test]
    fn busy_pool_runs_the_pass_on_the_pool_and_stops() {
        for threads in [1, 2, 3] {
            let p = pool(threads);
            let (on_worker, sum, seen) = p.install(|| {
                with_busy_pool(|| {
                    let on_worker = rayon::current_thread_index().is_some();
                    let mut sum = 0u64;
                    let seen = std::sync::Mutex::new(std::collections::HashSet::new());
                    for round in 0..200u64 {
                        sum += (0..64u64)
                            .into_par_iter()
                            .map(|i| {
                                seen.lock().unwrap().insert(rayon::current_thread_index());
                                std::hint::black_box(i * round)
                            })
                            .sum::<u64>();
                    }
                    (on_worker, sum, seen.into_inner().unwrap().len())
                })
            });
            assert!(on_worker || threads == 1);
            assert_eq!(sum, (0..200u64).map(|r| r * 2016).sum::<u64>());
            assert!(seen >= 1 && seen <= threads);
        }
    }

    #[test]
    fn even_chunk_cuts_products_into_whole_equal_tasks() {
        // 2B-4T Q, K, V at two threads: 480 would leave 160-row tails.
        assert_eq!(even_chunk(&[2560, 640, 640], 480, 2), 320);
        // Already even: kept.
        assert_eq!(even_chunk(&[2560], 320, 2), 320);
        assert_eq!(even_chunk(&[6912, 6912], 1728, 2), 1728);
        assert_eq!(even_chunk(&[128256], 16032, 2), 16032);
        // Three threads: 2400 rows in 12 tasks of 200; 2560 has no split
        // into 3 · k equal tasks, so the chunk stays.
        assert_eq!(even_chunk(&[2400], 204, 3), 200);
        assert_eq!(even_chunk(&[2560], 216, 3), 216);
        // Nothing in chunk/2 ..= chunk works: chunk itself.
        assert_eq!(even_chunk(&[1004], 84, 2), 84);
        // Every answer is a multiple of the row group and never above chunk.
        for rows in [[100usize, 36, 12], [4096, 1024, 1024], [7, 3, 5]] {
            for chunk in [4usize, 8, 60, 64, 132] {
                for threads in 1..5 {
                    let c = even_chunk(&rows, chunk, threads);
                    assert!(
                        c.is_multiple_of(GROUP) && c <= chunk,
                        "{rows:?} {chunk} {threads}: {c}"
                    );
                }
            }
        }
    }

    /// Called from outside any pool (as `tern run` calls `decode`), the
    /// pass moves onto a worker of the global pool; passes from two callers
    /// at once on one pool both finish, also while a worker of the pool is
    /// blocked outside rayon (here: joining an OS thread that waits for
    /// the other pass).
    #[test]
    fn busy_pool_from_outside_and_from_two_callers() {
        let p = pool(2);
        let sum = || (0..1000u64).into_par_iter().sum::<u64>();
        let r = p.install(|| {
            std::thread::scope(|s| {
                let a = s.spawn(|| p.install(|| with_busy_pool(sum)));
                let b = with_busy_pool(sum);
                (a.join().unwrap(), b)
            })
        });
        assert_eq!(r, (499_500, 499_500));
        let outside = with_busy_pool(|| rayon::current_thread_index().is_some());
        assert!(outside || rayon::current_num_threads() == 1);
    }
}

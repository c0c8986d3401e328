//! Threading of the matrix products, shared by every weight format: work
//! is split over output rows on the current rayon pool (the global one, or
//! the one a caller `install`ed), and per-token int8 activations.
//!
//! Every output value is computed by one kernel call in a fixed order, so
//! results do not depend on the thread count. One token (generation) on
//! several threads gives each thread a contiguous span of the rows to
//! stream, the first to finish splitting another's rest
//! ([`one_token_spans`]); many tokens (prompt) use smaller row blocks
//! whose weights stay in cache while every token passes over them.
//! Per-call scratch is thread-local and reused.

use super::memory::LineAligned;
use super::Kernel;
use super::GROUP;
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

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
    static SCRATCH_SPAN: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
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
/// fork-join, not one each. One token on more than one thread takes
/// [`one_token_spans`] instead.
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
    let threads = rayon::current_num_threads();
    if n == 1 && threads > 1 {
        return one_token_spans(jobs, threads, &f);
    }
    let chunk = chunk_rows(total, n, 64);
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
    if tasks.len() <= 1 || threads == 1 {
        for (ji, m0, mut outs) in tasks {
            f(ji, m0, &mut outs);
        }
    } else {
        tasks
            .into_par_iter()
            .for_each(|(ji, m0, mut outs)| f(ji, m0, &mut outs));
    }
}

/// Thread `t`'s first span of a one-token region over products of `rows`
/// rows on `threads` threads ([`one_token_spans`]): the product and the
/// row it starts at; `None` when the span is empty or `t ≥ threads`.
pub fn span_start(rows: &[usize], threads: usize, t: usize) -> Option<(usize, usize)> {
    if t >= threads {
        return None;
    }
    let starts = group_starts(rows)?;
    let total = u64::from(*starts.last()?);
    let (a, b) = (span_cut(total, threads, t), span_cut(total, threads, t + 1));
    if a >= b {
        return None;
    }
    Some(locate(&starts, u32::try_from(a).ok()?))
}

/// The first row group ([`GROUP`] rows) of each product of `rows` rows,
/// the products one after another, and the total after them
/// (`rows.len() + 1` entries); `None` past `u32::MAX` groups.
fn group_starts(rows: &[usize]) -> Option<Vec<u32>> {
    let mut starts = Vec::with_capacity(rows.len() + 1);
    let mut total = 0u32;
    for &r in rows {
        starts.push(total);
        total = total.checked_add(u32::try_from(r.div_ceil(GROUP)).ok()?)?;
    }
    starts.push(total);
    Some(starts)
}

/// The product and first row of group `g` (below the total) of
/// [`group_starts`]' `starts`; empty products are skipped.
fn locate(starts: &[u32], g: u32) -> (usize, usize) {
    let j = starts.partition_point(|&s| s <= g) - 1;
    (j, (g - starts[j]) as usize * GROUP)
}

/// The first of `total` row groups in thread `t`'s span (`t ≤ threads`):
/// ⌊total · t / threads⌋.
fn span_cut(total: u64, threads: usize, t: usize) -> u64 {
    // t ≤ threads: the quotient is at most `total` (u128: no overflow).
    let c = u128::from(total) * t as u128 / threads.max(1) as u128;
    u64::try_from(c).unwrap_or(total)
}

/// Idle workers [`with_busy_pool`] hands prefetch hints to (the rest get
/// none).
pub const MAX_HINTS: usize = 8;

/// One prefetch hint: an address range (never dereferenced, only
/// prefetched) and a count bumped with each new range.
struct Hint {
    epoch: AtomicU64,
    addr: AtomicUsize,
    len: AtomicUsize,
}

/// One slot per span rank, shared by every pool and pass in the process:
/// two passes at once may prefetch each other's weights, which costs
/// bandwidth but never correctness.
static HINTS: [Hint; MAX_HINTS + 1] = [const {
    Hint {
        epoch: AtomicU64::new(0),
        addr: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
    }
}; MAX_HINTS + 1];

/// Whether hints are on (`TERN_HINTS=0` turns them off, for comparison).
pub fn hints_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("TERN_HINTS").map_or(true, |v| v != "0"))
}

/// Hand span `t`'s worker the range `addr .. addr + len` to prefetch.
pub fn publish_hint(t: usize, addr: usize, len: usize) {
    if let Some(h) = HINTS.get(t) {
        h.addr.store(addr, Ordering::Relaxed);
        h.len.store(len, Ordering::Relaxed);
        h.epoch.fetch_add(1, Ordering::Release);
    }
}

/// Row groups a one-token claim takes at least (384 rows: 240 KiB of
/// 2560-wide ternary weights), and the share of its span's rest it takes
/// (one in [`CLAIM_SHARE`]). Fewer, larger claims read faster: each claim
/// starts its kernel's streams afresh (the `StreamPlan`'s runs spread over
/// the claim, the closer together the smaller it is). Whole decode steps
/// of the 2B-4T files on two threads, alternated in one process on the
/// Intel Xeon VM (2026-12-02, six rounds, medians of % of the bound),
/// against a quarter of the rest and at least 16 groups (77–79% with the
/// Q6_K head, 82% with the F16 one): a half and 32 groups 80.7–80.8%, 48
/// 81.5%, 64 81.6–81.7% (F16 85.0%), 96 82.5–82.8% (F16 85.0%), 128
/// 82.5% (F16 84.8%); a third or all of the rest at once, 79.8–80.9%.
///
/// Near a region's end a claim of 96 groups leaves the other thread idle
/// until it is done (end idle 0.3-0.7 ms a 2B-4T token on two threads,
/// Zen 5 VM, 2026-12-03). Halving the last claims instead (once the span's
/// rest is under 192 groups: a half of it down to 24 or 48 groups, or a
/// third down to 16 with splits of 16-group spans) halved that idle time
/// at best but made whole steps 0.5-1.2% slower (Q6_K file, alternated in
/// one process): the extra claims restart their streams. A thread with
/// nothing left to take prefetching the start of its span of the next
/// region (published a region ahead) made no difference either (within
/// ±0.8%, six rounds Q6_K, four F16).
const CLAIM_MIN_GROUPS: u32 = 96;
const CLAIM_SHARE: u32 = 2;

/// Row groups a span must hold to be split by a thief (what it leaves
/// and what it takes are then at least 16 groups). 16, 32, 64 or 192
/// measured alike with the claims above.
const STEAL_MIN_GROUPS: u32 = 32;

/// A span of row groups `[front, back)` in one atomic word (front in the
/// high half), so that its owner's claims and a thief's split are each one
/// compare-and-swap.
fn pack(front: u32, back: u32) -> u64 {
    (u64::from(front) << 32) | u64::from(back)
}

fn unpack(v: u64) -> (u32, u32) {
    // The halves of a u64 always fit a u32.
    ((v >> 32) as u32, (v & 0xffff_ffff) as u32)
}

/// One token's products on `threads` threads: the products' row groups
/// ([`GROUP`] rows, in job order) are cut into one contiguous span per
/// thread, and each thread streams its span from the front, claiming
/// `max(rest / 2, 96 groups)` at a time ([`CLAIM_MIN_GROUPS`]). A thread
/// whose span is empty takes the back half of the fullest other span
/// (when it holds at least [`STEAL_MIN_GROUPS`]) and goes on with that;
/// when no span is worth splitting it stops. So each thread reads one
/// stream until the end is near, and the region ends with both threads
/// busy to within a claim, where fixed tasks left one thread waiting for
/// the other's last task.
///
/// Each output row's value does not depend on which rows a kernel call
/// covers (`Linear::matmul_rows`), so results do not depend on which
/// thread took what. A claim's outputs are computed into thread-local
/// scratch and copied into the job's output under its lock (no unsafe
/// sharing of the output slices).
///
/// Measured on the Intel Xeon VM (2026-12-01, 2 threads, 2B-4T shapes),
/// alternated in one process against four fixed tasks per thread, each
/// round 32 tokens between two streaming-sum measurements: idle time at
/// the ends of a token's regions 1.4–1.7 → 0.47–0.49 ms per thread; tg
/// at 80.1 → 84.1% of the adjacent bound (median of 12 rounds, Q6_K head)
/// and 90.2 → 94.6% (8 rounds, F16 head).
fn one_token_spans<F>(jobs: Vec<Job<'_>>, threads: usize, f: &F)
where
    F: Fn(usize, usize, &mut [&mut [f32]]) + Sync,
{
    let rows: Vec<usize> = jobs.iter().map(|j| j.rows).collect();
    let Some(starts) = group_starts(&rows) else {
        panic!("{} output rows in one region", rows.iter().sum::<usize>());
    };
    let total = starts[rows.len()];
    let outs: Vec<Mutex<&mut [f32]>> = jobs.into_iter().map(|j| Mutex::new(j.out)).collect();
    let cut = |t: usize| -> u32 {
        // At most `total`, a u32.
        u32::try_from(span_cut(u64::from(total), threads, t)).unwrap_or(total)
    };
    let spans: Vec<AtomicU64> = (0..threads)
        .map(|t| AtomicU64::new(pack(cut(t), cut(t + 1))))
        .collect();
    // Groups [g0, g1) (of any jobs) into their outputs.
    let run = |g0: u32, g1: u32| {
        let mut g = g0;
        while g < g1 {
            let (j, m0) = locate(&starts, g);
            let end = starts[j + 1].min(g1);
            let m1 = ((end - starts[j]) as usize * GROUP).min(rows[j]);
            // Taken out of the thread-local for the call, so that an `f`
            // that runs rayon work (and this thread another claim
            // meanwhile) finds it free.
            let mut buf = SCRATCH_SPAN.with(|s| std::mem::take(&mut *s.borrow_mut()));
            if buf.len() < m1 - m0 {
                buf.resize(m1 - m0, 0.0);
            }
            f(j, m0, &mut [&mut buf[..m1 - m0]]);
            {
                let mut out = outs[j].lock().unwrap_or_else(|e| e.into_inner());
                out[m0..m1].copy_from_slice(&buf[..m1 - m0]);
            }
            SCRATCH_SPAN.with(|s| *s.borrow_mut() = buf);
            g = end;
        }
    };
    // The back half of the fullest span but `me`'s, if one is worth it.
    let steal = |me: usize| -> Option<(u32, u32)> {
        loop {
            let (u, v) = spans
                .iter()
                .enumerate()
                .filter(|&(u, _)| u != me)
                .map(|(u, s)| (u, s.load(Ordering::Acquire)))
                .max_by_key(|&(_, v)| {
                    let (a, b) = unpack(v);
                    b.saturating_sub(a)
                })?;
            let (a, b) = unpack(v);
            if b.saturating_sub(a) < STEAL_MIN_GROUPS {
                return None;
            }
            let mid = a + (b - a) / 2;
            let shrunk = pack(a, mid);
            if spans[u]
                .compare_exchange(v, shrunk, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some((mid, b));
            }
        }
    };
    let worker = |t: usize| loop {
        loop {
            let v = spans[t].load(Ordering::Acquire);
            let (a, b) = unpack(v);
            if a >= b {
                break;
            }
            let take = ((b - a) / CLAIM_SHARE).max(CLAIM_MIN_GROUPS).min(b - a);
            let claimed = pack(a + take, b);
            if spans[t]
                .compare_exchange(v, claimed, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                run(a, a + take);
            }
        }
        match steal(t) {
            Some((a, b)) => spans[t].store(pack(a, b), Ordering::Release),
            None => return,
        }
    };
    // A thread that never starts (busy elsewhere) leaves its span to be
    // split by the others; nothing waits on any one thread.
    rayon::scope(|s| {
        for t in 1..threads {
            let worker = &worker;
            s.spawn(move |_| worker(t));
        }
        worker(0);
    });
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
/// each runs whatever the regions queue (`rayon::yield_now`), prefetches
/// the start of its next span when the pass hints at it
/// ([`publish_hint`]), spins otherwise, and ends when `f` does. A worker busy elsewhere (another
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
                let me = rayon::current_thread_index();
                if me == leader {
                    return;
                }
                // The span this worker is likely to start on: its rank
                // among the workers that are not the leader. With two
                // threads that is the other span for sure; with more,
                // rayon decides who runs which span, so it is a guess.
                let hint = match (me, leader) {
                    (Some(i), Some(l)) => HINTS.get(if i < l { i + 1 } else { i }),
                    _ => None,
                };
                let mut seen = hint.map_or(0, |h| h.epoch.load(Ordering::Acquire));
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() == Some(rayon::Yield::Executed) {
                        continue;
                    }
                    if let Some(h) = hint {
                        let e = h.epoch.load(Ordering::Acquire);
                        if e != seen {
                            seen = e;
                            let (addr, len) = (
                                h.addr.load(Ordering::Relaxed),
                                h.len.load(Ordering::Relaxed),
                            );
                            prefetch_while_idle(addr, len);
                            continue;
                        }
                    }
                    std::hint::spin_loop();
                }
            });
        }
        let r = f();
        done.store(true, Ordering::Release);
        r
    })
}

/// Prefetch `addr .. addr + len` into this core's L2 in 4 KiB pieces,
/// stopping as soon as the pool hands this worker a job (the region the
/// hint was for has started, so the rest is late).
fn prefetch_while_idle(addr: usize, len: usize) {
    const PIECE: usize = 4 << 10;
    let mut at = 0;
    while at < len {
        super::ops::prefetch_l2(addr.wrapping_add(at), PIECE.min(len - at));
        at += PIECE;
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            return;
        }
    }
}

/// Output rows per task: a few chunks per thread for one token (on one
/// thread; more take [`one_token_spans`]), blocks of at most `max_rows`
/// for many tokens. A multiple of 4 (the
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

    /// One token on 1–5 threads: every row of every product written once,
    /// by calls on whole row groups within one product, with the value
    /// the single-thread split gives; also with rows that are not whole
    /// groups and with a worker blocked outside rayon.
    #[test]
    fn one_token_rows_each_computed_once_whatever_the_threads() {
        use std::sync::atomic::AtomicUsize;
        let value = |j: usize, r: usize| (j * 1_000_003 + r * 7919) as f32;
        let shapes: [&[usize]; 4] = [&[2560, 640, 640], &[13, 4, 257], &[128256], &[4]];
        for rows in shapes {
            for threads in 1..=5 {
                let calls: Vec<Vec<AtomicUsize>> = rows
                    .iter()
                    .map(|&r| (0..r).map(|_| AtomicUsize::new(0)).collect())
                    .collect();
                let mut outs: Vec<Vec<f32>> = rows.iter().map(|&r| vec![-1.0; r]).collect();
                pool(threads).install(|| {
                    with_busy_pool(|| {
                        let jobs = outs
                            .iter_mut()
                            .zip(rows)
                            .map(|(o, &r)| Job { out: o, rows: r })
                            .collect();
                        par_rows(jobs, 1, |j, m0, o| {
                            assert_eq!(o.len(), 1);
                            assert!(m0.is_multiple_of(GROUP));
                            let len = o[0].len();
                            assert!(m0 + len <= rows[j]);
                            assert!(len.is_multiple_of(GROUP) || m0 + len == rows[j]);
                            for (i, v) in o[0].iter_mut().enumerate() {
                                calls[j][m0 + i].fetch_add(1, Ordering::Relaxed);
                                *v = value(j, m0 + i);
                            }
                        });
                    })
                });
                for (j, o) in outs.iter().enumerate() {
                    for (r, &v) in o.iter().enumerate() {
                        assert_eq!(calls[j][r].load(Ordering::Relaxed), 1, "{rows:?} {threads}");
                        assert_eq!(v, value(j, r), "{rows:?} {threads} job {j} row {r}");
                    }
                }
            }
        }
        // A worker blocked outside rayon (joining an OS thread that runs
        // a pass of its own) leaves its span to the other.
        let p = pool(2);
        let run = || {
            let mut out = vec![0f32; 4096];
            with_busy_pool(|| {
                par_rows(
                    vec![Job {
                        out: &mut out,
                        rows: 4096,
                    }],
                    1,
                    |_, m0, o| {
                        for (i, v) in o[0].iter_mut().enumerate() {
                            *v = (m0 + i) as f32;
                        }
                    },
                )
            });
            out.iter().enumerate().all(|(i, &v)| v == i as f32)
        };
        let (a, b) = p.install(|| {
            std::thread::scope(|s| {
                let a = s.spawn(|| p.install(run));
                let b = run();
                (a.join().unwrap(), b)
            })
        });
        assert!(a && b);
    }

    /// `span_start` names the row thread `t`'s first span starts on: spans
    /// ascend from row 0, thread `t`'s at group ⌊groups · t / threads⌋.
    #[test]
    fn span_start_is_where_each_thread_begins() {
        for rows in [
            &[2560usize, 640, 640][..],
            &[6912, 6912],
            &[13, 4, 257],
            &[128256],
        ] {
            let groups: usize = rows.iter().map(|r| r.div_ceil(GROUP)).sum();
            for threads in 2..=4 {
                let starts: Vec<Option<(usize, usize)>> =
                    (0..threads).map(|t| span_start(rows, threads, t)).collect();
                assert_eq!(span_start(rows, threads, threads), None);
                // Spans cover the groups in order: starts ascend.
                let flat: Vec<usize> = starts
                    .iter()
                    .flatten()
                    .map(|&(j, m)| {
                        rows[..j].iter().map(|r| r.div_ceil(GROUP)).sum::<usize>() + m / GROUP
                    })
                    .collect();
                assert!(
                    flat.windows(2).all(|w| w[0] < w[1]),
                    "{rows:?} {threads}: {starts:?}"
                );
                assert_eq!(starts[0], Some((0, 0)));
                for (t, &g) in flat.iter().enumerate() {
                    assert_eq!(g, groups * t / threads, "{rows:?} {threads} {t}");
                }
            }
        }
        // Fewer groups than threads: some spans are empty.
        assert_eq!(span_start(&[4], 2, 0), None);
        assert_eq!(span_start(&[4], 2, 1), Some((0, 0)));
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

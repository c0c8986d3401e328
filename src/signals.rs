//! OS signal glue, all of it in this module: a SIGBUS handler for files that
//! change while they are memory-mapped, and Ctrl-C / SIGTERM / SIGHUP for
//! commands that write files ([`remove_partials_on_signal`]).
//!
//! tern maps model files (GGUF) and checkpoints (safetensors) read-only. If
//! another process truncates or rewrites such a file while it is mapped, the
//! next read of a page past the new end raises SIGBUS, which would kill tern
//! with no message (llama.cpp has the same limit; it is inherent to mmap).
//! [`install_sigbus_handler`] turns that into one line on stderr and exit
//! status [`SIGBUS_EXIT_CODE`]. Nothing can be recovered at that point: the
//! bytes the program was reading are gone. Do not rewrite a model in place
//! while tern uses it; write a new file and rename it over the old one
//! (which is what `tern convert` does), so running processes keep the old
//! inode.
//!
//! On non-Unix targets the function does nothing.

/// Exit status after a SIGBUS (distinct from the 1 of ordinary errors).
pub const SIGBUS_EXIT_CODE: i32 = 3;

/// The line written on SIGBUS.
pub const SIGBUS_MESSAGE: &str = "tern: error: a memory-mapped model or checkpoint file changed while in use (truncated or rewritten by another process); do not rewrite a model in place while it is used\n";

/// Install the SIGBUS handler for the whole process (idempotent).
#[cfg(unix)]
pub fn install_sigbus_handler() {
    extern "C" fn on_sigbus(_sig: libc::c_int) {
        // Only async-signal-safe calls: write(2) of a static buffer, _exit(2).
        // SAFETY: the pointer and length describe a 'static byte string;
        // write may write less or fail, and either is acceptable here.
        unsafe {
            let _ = libc::write(
                libc::STDERR_FILENO,
                SIGBUS_MESSAGE.as_ptr().cast(),
                SIGBUS_MESSAGE.len(),
            );
            libc::_exit(SIGBUS_EXIT_CODE);
        }
    }
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
    // the handler only calls async-signal-safe functions and never returns.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        // Failure (it cannot fail for SIGBUS with a valid action) only
        // leaves the default action, a silent kill.
        let _ = libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}

/// Install the SIGBUS handler (no-op: this platform has no SIGBUS).
#[cfg(not(unix))]
pub fn install_sigbus_handler() {}

/// On Ctrl-C, SIGTERM or (Linux) SIGHUP, remove the temporary files of the
/// outputs being written ([`crate::gguf::writer::remove_partials_then`]) and then
/// end as the signal's default action would (so a shell loop or script
/// around tern stops too, and `kill`'s caller sees the signal); an exit
/// skips the drops that would remove them, and an interrupted `tern
/// convert` used to leave its `.NAME.XXXXXX.partial`, up to the model's
/// size. For commands that write files and have no signal handling of
/// their own. A signal the process was started with ignored (SIGINT in a
/// script's background job, SIGHUP under `nohup`) is left ignored.
/// SIGKILL cannot be caught: after one, a `.partial` file stays.
#[cfg(unix)]
pub fn remove_partials_on_signal() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    // SIGHUP only where a SIGHUP ignored from the start (`nohup`) can be
    // told, so that catching it never undoes nohup.
    #[cfg(target_os = "linux")]
    let catch = [SIGINT, SIGTERM, signal_hook::consts::SIGHUP];
    #[cfg(not(target_os = "linux"))]
    let catch = [SIGINT, SIGTERM];
    let wanted: Vec<i32> = catch.into_iter().filter(|&s| !signal_ignored(s)).collect();
    if wanted.is_empty() {
        return;
    }
    let mut signals = match signal_hook::iterator::Signals::new(&wanted) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "tern: warning: cannot catch Ctrl-C or SIGTERM ({e}); an interrupted write may leave a .partial file"
            );
            return;
        }
    };
    // The handler only wakes this thread; the clean-up runs here, outside
    // signal context.
    let spawned = std::thread::Builder::new()
        .name("tern-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                crate::gguf::writer::remove_partials_then(|| {
                    // Resets the signal to its default action and raises it.
                    let _ = signal_hook::low_level::emulate_default_handler(sig);
                    std::process::exit(128 + sig);
                });
            }
        });
    if let Err(e) = spawned {
        eprintln!(
            "tern: warning: cannot catch Ctrl-C or SIGTERM ({e}); an interrupted write may leave a .partial file"
        );
    }
}

/// On Ctrl-C, remove the temporary files of the outputs being written
/// ([`crate::gguf::writer::remove_partials_then`]) and exit with status 130.
#[cfg(not(unix))]
pub fn remove_partials_on_signal() {
    if let Err(e) = ctrlc::set_handler(|| {
        crate::gguf::writer::remove_partials_then(|| std::process::exit(130));
    }) {
        eprintln!(
            "tern: warning: cannot catch Ctrl-C ({e}); an interrupted write may leave a .partial file"
        );
    }
}

/// Whether this process was started with signal `sig` ignored (Linux: the
/// `SigIgn` mask of `/proc/self/status`; elsewhere taken as not).
#[cfg(unix)]
fn signal_ignored(sig: i32) -> bool {
    let Ok(bit) = u32::try_from(sig - 1) else {
        return false;
    };
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        // Signal n is bit n - 1 of the mask.
        .is_some_and(|m| bit < 64 && m & (1 << bit) != 0)
}

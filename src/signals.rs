//! OS signal glue, all of it in this module: a SIGBUS handler for files that
//! change while they are memory-mapped, and Ctrl-C for commands that write
//! files ([`remove_partials_on_ctrl_c`]).
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

/// On Ctrl-C, remove the temporary files of the outputs being written
/// ([`crate::gguf::writer::remove_partials`]) and then end as SIGINT's
/// default action would (so a shell loop or script around tern stops
/// too); an exit skips the drops that would remove them, and an
/// interrupted `tern convert` used to leave its `.NAME.XXXXXX.partial`,
/// up to the model's size. For commands that write files and have no
/// Ctrl-C handling of their own. Nothing is installed where SIGINT is
/// ignored (a background job of a script), so such a tern still ignores it.
pub fn remove_partials_on_ctrl_c() {
    if sigint_ignored() {
        return;
    }
    if let Err(e) = ctrlc::set_handler(|| {
        crate::gguf::writer::remove_partials();
        die_of_sigint();
    }) {
        eprintln!(
            "tern: warning: cannot catch Ctrl-C ({e}); an interrupted write may leave a .partial file"
        );
    }
}

#[cfg(unix)]
fn die_of_sigint() {
    // signal-hook resets SIGINT to its default action and raises it.
    let _ = signal_hook::low_level::emulate_default_handler(signal_hook::consts::SIGINT);
    std::process::exit(130);
}

#[cfg(not(unix))]
fn die_of_sigint() {
    std::process::exit(130);
}

/// Whether this process was started with SIGINT ignored (Linux: the
/// `SigIgn` mask of `/proc/self/status`; elsewhere taken as not).
fn sigint_ignored() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        // SIGINT is signal 2: bit 1 of the mask.
        .is_some_and(|m| m & (1 << 1) != 0)
}

//! OS signal glue, all of it in this module: a SIGBUS handler for files that
//! change while they are memory-mapped.
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

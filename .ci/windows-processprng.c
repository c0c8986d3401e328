/*
 * bcryptprimitives.dll with the one function Rust's standard library imports
 * from it, for running tern.exe under Debian bookworm's wine 8.0, which lacks
 * that DLL (wine has it from 9.x on; every Windows 10 and 11 has it).
 * Rust >= 1.78 seeds HashMap keys with ProcessPrng, so without this no Rust
 * program built for x86_64-pc-windows-gnu starts under wine 8.0 ("Library
 * bcryptprimitives.dll ... not found", exit code 53). It fills the buffer
 * from the system RNG through BCryptGenRandom, as Windows' own ProcessPrng
 * does. .ci/windows.sh builds it with mingw-w64 into the wine prefix only; it
 * is no part of tern.
 */
#include <windows.h>
#include <bcrypt.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!BCRYPT_SUCCESS(BCryptGenRandom(NULL, data, n, BCRYPT_USE_SYSTEM_PREFERRED_RNG)))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}

#!/usr/bin/env bash
# Windows in CI: cross-compile tern for x86_64-pc-windows-gnu with mingw-w64
# and run the Windows build under wine (Debian's wine64), comparing it with
# the Linux build of the same tree:
#   - the README's first command (built-in model); the same seed gives the
#     same text as on Linux; AVX2 chosen at run time where the CPU has it,
#     and TERN_KERNEL=scalar gives the same text;
#   - `convert` of the fixtures, given Windows paths (drive letter,
#     backslashes), byte-identical to the Linux build's output;
#   - `check` (logits) of every vendored model against the transformers and
#     bitnet.cpp reference bundles, with the AVX2 and the scalar kernel, and
#     the same figures as the Linux build;
#   - piped `chat` (LF and CRLF input) with the same replies as on Linux;
#   - `perplexity` of the built-in model equal to the Linux figure;
#   - an interactive `chat` in a Windows console (wine's console on a tmux
#     pseudo-terminal): line editing with UTF-8 input, Ctrl-C stops a reply,
#     Ctrl-D exits, the history file lands in %APPDATA%\tern;
#   - the whole `cargo test --release` with wine as cargo's runner.
# Installs what it needs (mingw-w64, wine64, tmux, the rustup target). Called
# from .ci/run; runnable on its own from anywhere. Prints the time of each
# step; TERN_WINDOWS_SKIP_CARGO_TEST=1 leaves out the cargo test under wine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$SECONDS
TARGET=x86_64-pc-windows-gnu
timings=()

say() { echo "windows.sh: $*"; }
fail() {
    echo "windows.sh: FAIL: $*" >&2
    exit 1
}
# step NAME: starts timing a step (the previous one ends).
step_name=""
step_t0=$SECONDS
step() {
    if [ -n "$step_name" ]; then
        timings+=("$(printf '%5d s  %s' $((SECONDS - step_t0)) "$step_name")")
        say "(${timings[-1]# })"
    fi
    step_name=$1
    step_t0=$SECONDS
    say "== $1"
}

step "install mingw-w64, wine64, tmux and the rustup target"
pkgs=()
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || pkgs+=(gcc-mingw-w64-x86-64-win32)
# Debian bookworm's wine64 installs its loader as /usr/lib/wine/wine64 only
# (/usr/bin/wine comes with the `wine` package, which needs i386).
WINE=$(command -v wine64 || echo /usr/lib/wine/wine64)
[ -x "$WINE" ] || pkgs+=(wine64)
command -v tmux >/dev/null 2>&1 || pkgs+=(tmux)
if [ "${#pkgs[@]}" -gt 0 ]; then
    say "installing ${pkgs[*]}"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    WINE=$(command -v wine64 || echo /usr/lib/wine/wine64)
fi
rustup target add "$TARGET" >/dev/null 2>&1 || rustup target add "$TARGET"
say "$($WINE --version), $(x86_64-w64-mingw32-gcc --version | head -n 1)"

export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
# A wine prefix of our own; no debug chatter, no Mono/Gecko installers.
work=$(mktemp -d /tmp/tern-windows.XXXXXX)
export WINEPREFIX=$work/prefix WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
unset DISPLAY WAYLAND_DISPLAY
cleanup() {
    tmux -S "$work/tmux.sock" kill-server >/dev/null 2>&1 || true
    WINEPREFIX=$work/prefix wineserver_k
    rm -rf "$work"
}
wineserver_k() {
    local ws
    ws=$(command -v wineserver || command -v wineserver64 || echo /usr/lib/wine/wineserver64)
    "$ws" -k >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "wine prefix (first start)"
"$WINE" wineboot -i >/dev/null 2>&1 || true
sys32=$WINEPREFIX/drive_c/windows/system32
[ -d "$sys32" ] || fail "wineboot did not create $sys32"
if [ ! -e "$sys32/bcryptprimitives.dll" ]; then
    # Rust's std imports ProcessPrng from bcryptprimitives.dll, which wine 8.0 lacks.
    x86_64-w64-mingw32-gcc -O2 -shared -s -o "$sys32/bcryptprimitives.dll" \
        .ci/windows-processprng.c -Wl,--export-all-symbols -lbcrypt
fi

step "build (Linux and x86_64-pc-windows-gnu)"
cargo build --release --quiet
cargo build --release --quiet --target "$TARGET"
LIN=$ROOT/target/release/tern
EXE=$ROOT/target/$TARGET/release/tern.exe
[ -f "$EXE" ] || fail "no $EXE"
win() { "$WINE" "$EXE" "$@"; }
# A Windows path for a Linux one: wine maps Z: to /.
winpath() {
    local p
    p=$(realpath -m "$1")
    printf 'Z:%s' "${p//\//\\}"
}
mkdir -p "$work/lin" "$work/win"

# The kernel named on a `run` report line: "tern: 2 threads, kernel avx2, seed 7"
# ("1 thread" for one).
kernel_of() { sed -n 's/^tern: .* kernel \([a-z0-9]*\),.*/\1/p' "$1"; }

step "README's first command (built-in model), kernels"
win run -p "ROMEO." >"$work/win/readme.out" 2>"$work/win/readme.err" ||
    fail "tern.exe run -p ROMEO. failed: $(cat "$work/win/readme.err")"
grep -q '^ROMEO\.' "$work/win/readme.out" || fail "no text after the prompt"
[ "$(wc -c <"$work/win/readme.out")" -gt 40 ] || fail "too little text: $(cat "$work/win/readme.out")"
grep -q 'using the built-in model tern-shakespeare-i2_s.gguf' "$work/win/readme.err" ||
    fail "no built-in model note on stderr"
head -c 300 "$work/win/readme.out"
echo
# The default thread count (physical cores) is the Linux build's.
"$LIN" run -p "ROMEO." -n 8 >/dev/null 2>"$work/lin/readme.err"
threads_of() { sed -n 's/^tern: \([0-9]*\) threads\?,.*/\1/p' "$1"; }
say "default threads: Linux $(threads_of "$work/lin/readme.err"), Windows $(threads_of "$work/win/readme.err")"
[ "$(threads_of "$work/win/readme.err")" = "$(threads_of "$work/lin/readme.err")" ] || fail "default thread count differs"
# Same seed, same text as on Linux; the kernel chosen at run time is the one
# the Linux build chooses on this CPU, and AVX2 where the CPU has it.
args=(run -p "ROMEO." -n 48 --seed 7 -t 2)
"$LIN" "${args[@]}" >"$work/lin/run.out" 2>"$work/lin/run.err"
win "${args[@]}" >"$work/win/run.out" 2>"$work/win/run.err"
cmp "$work/lin/run.out" "$work/win/run.out" || fail "run --seed 7: Windows text differs from Linux"
klin=$(kernel_of "$work/lin/run.err")
kwin=$(kernel_of "$work/win/run.err")
say "kernel chosen at run time: Linux $klin, Windows $kwin"
[ -n "$kwin" ] && [ "$kwin" = "$klin" ] || fail "kernel: Windows '$kwin', Linux '$klin'"
if grep -qw avx2 /proc/cpuinfo; then
    [ "$kwin" != scalar ] || fail "the CPU has AVX2 but tern.exe chose the scalar kernel"
    TERN_KERNEL=avx2 win "${args[@]}" >"$work/win/avx2.out" 2>"$work/win/avx2.err"
    [ "$(kernel_of "$work/win/avx2.err")" = avx2 ] || fail "TERN_KERNEL=avx2 not used"
    cmp "$work/lin/run.out" "$work/win/avx2.out" || fail "TERN_KERNEL=avx2: text differs"
fi
TERN_KERNEL=scalar win "${args[@]}" >"$work/win/scalar.out" 2>"$work/win/scalar.err"
[ "$(kernel_of "$work/win/scalar.err")" = scalar ] || fail "TERN_KERNEL=scalar not used"
cmp "$work/lin/run.out" "$work/win/scalar.out" || fail "TERN_KERNEL=scalar: text differs"
if TERN_KERNEL=bogus win "${args[@]}" >/dev/null 2>"$work/win/bogus.err"; then
    fail "TERN_KERNEL=bogus was accepted"
fi
grep -q 'unknown kernel' "$work/win/bogus.err" || fail "TERN_KERNEL=bogus: $(cat "$work/win/bogus.err")"

step "convert: Windows paths, byte-identical to Linux"
n_conv=0
for dir in models/fixtures/b158-bf16 models/fixtures/b158-sparse models/fixtures/b158-packed \
    models/fixtures/bitnet-silu models/tern-shakespeare; do
    name=$(basename "$dir")
    # Default output name in the current directory, input given as
    # Z:\...\dir\ (drive letter, backslashes, trailing separator).
    (cd "$work/lin" && "$LIN" convert "$ROOT/$dir" >/dev/null 2>&1)
    (cd "$work/win" && win convert "$(winpath "$ROOT/$dir")\\" >/dev/null 2>"$work/win/convert.err") ||
        fail "tern.exe convert $dir: $(cat "$work/win/convert.err")"
    cmp "$work/lin/$name-i2_s.gguf" "$work/win/$name-i2_s.gguf" || fail "convert $dir: outputs differ"
    # Other output types, --outfile as a Windows path.
    for t in "tq1_0 q8_0" "tq2_0 q6_k" "f16 f32"; do
        set -- $t
        "$LIN" convert "$dir" --outtype "$1" --embd-type "$2" --outfile "$work/lin/$name-$1.gguf" >/dev/null 2>&1
        win convert "$dir" --outtype "$1" --embd-type "$2" --outfile "$(winpath "$work/win/$name-$1.gguf")" \
            >/dev/null 2>"$work/win/convert.err" || fail "tern.exe convert $dir --outtype $1: $(cat "$work/win/convert.err")"
        cmp "$work/lin/$name-$1.gguf" "$work/win/$name-$1.gguf" || fail "convert $dir --outtype $1: outputs differ"
    done
    n_conv=$((n_conv + 4))
done
# Refusals keep working with Windows paths: an existing output needs --force,
# and nothing is left behind.
if win convert "$(winpath "$ROOT/models/fixtures/b158-sparse")" \
    --outfile "$(winpath "$work/win/b158-sparse-i2_s.gguf")" >/dev/null 2>"$work/win/exists.err"; then
    fail "convert over an existing file without --force succeeded"
fi
grep -q 'already exists' "$work/win/exists.err" || fail "no 'already exists' error: $(cat "$work/win/exists.err")"
ls "$work/win" | grep -q '\.partial$' && fail "a .partial file was left behind"
say "$n_conv conversions byte-identical to Linux"

step "logits against the reference bundles (tern check), AVX2 and scalar"
n_check=0
for gguf in vendor/reference/gguf/*.i2_s.gguf; do
    name=$(basename "$gguf" .i2_s.gguf)
    for ref in transformers bitnet.cpp; do
        for k in scalar ""; do
            TERN_KERNEL=$k win check -m "$(winpath "$gguf")" --reference "$(winpath "vendor/reference/$ref/$name")" \
                >"$work/win/check.out" 2>&1 || {
                cat "$work/win/check.out"
                fail "check $name vs $ref (kernel ${k:-auto})"
            }
            n_check=$((n_check + 1))
        done
        # The same figures as the Linux build, same kernel (the first line
        # names the paths, so it is left out).
        "$LIN" check -m "$gguf" --reference "vendor/reference/$ref/$name" >"$work/lin/check.out" 2>&1
        if ! diff <(tail -n +2 "$work/lin/check.out") <(tail -n +2 "$work/win/check.out"); then
            fail "check $name vs $ref: the figures differ from Linux"
        fi
    done
    # The file tern.exe converted (F16 embedding) too.
    win check -m "$work/win/$name-i2_s.gguf" --reference "vendor/reference/transformers/$name" \
        >"$work/win/check.out" 2>&1 || {
        cat "$work/win/check.out"
        fail "check of tern.exe's conversion of $name"
    }
    n_check=$((n_check + 1))
done
tail -n 6 "$work/win/check.out"
say "$n_check reference checks passed"

step "piped chat: same replies as Linux (LF and CRLF input)"
msgs='Good morrow! Who art thou?\n/set temp 0\nWhat news from Rome?\n'
printf "$msgs" | "$LIN" chat -n 24 --seed 3 -t 2 >"$work/lin/chat.out" 2>/dev/null
printf "$msgs" | win chat -n 24 --seed 3 -t 2 >"$work/win/chat.out" 2>"$work/win/chat.err" ||
    fail "piped chat: $(cat "$work/win/chat.err")"
[ -s "$work/win/chat.out" ] || fail "piped chat wrote nothing"
cmp "$work/lin/chat.out" "$work/win/chat.out" || fail "piped chat: replies differ from Linux"
printf "${msgs//\\n/\\r\\n}" | win chat -n 24 --seed 3 -t 2 >"$work/win/chat-crlf.out" 2>/dev/null
cmp "$work/lin/chat.out" "$work/win/chat-crlf.out" || fail "piped chat with CRLF input: replies differ"
cat "$work/win/chat.out"

step "perplexity of the built-in model equals Linux"
ppl_args=(perplexity -f models/tern-shakespeare/heldout.txt -c 256 -t 2)
"$LIN" "${ppl_args[@]}" >"$work/lin/ppl.out" 2>/dev/null
win "${ppl_args[@]}" >"$work/win/ppl.out" 2>"$work/win/ppl.err" || fail "perplexity: $(cat "$work/win/ppl.err")"
plin=$(grep '^Final estimate' "$work/lin/ppl.out")
pwin=$(grep '^Final estimate' "$work/win/ppl.out")
say "Linux:   $plin"
say "Windows: $pwin"
[ -n "$pwin" ] && [ "$pwin" = "$plin" ] || fail "perplexity differs"

step "interactive chat in a Windows console (wine on a tmux pty)"
# wine gives a program started from a terminal a Windows console on that
# terminal, so tern.exe sees a console: rustyline's Windows backend, the
# console Ctrl-C handler, UTF-16 console output. Not checked here: Ctrl-C at
# the prompt (wine 8 leaves the tty's ISIG on, so Ctrl-C always arrives as a
# console control event, where Windows hands it to rustyline as a key).
sock=$work/tmux.sock
tm() { tmux -S "$sock" "$@"; }
screen() { tm capture-pane -p -J -S - -t chat; }
on_screen() { screen | grep -qE -- "$1"; }
# The prompt ("> ") is the last non-blank line and comes after the last line
# matching the extended regex $1.
prompt_after() {
    screen | RE=$1 awk 'BEGIN { re = ENVIRON["RE"] }
        $0 ~ re { m = NR }
        NF { l = $0; n = NR }
        END { sub(/[ \t]+$/, "", l); exit !(m && n > m && l == ">") }'
}
wait_until() { # WHAT COMMAND...
    local what=$1 i
    shift
    for i in $(seq 1 600); do
        if "$@"; then return 0; fi
        sleep 0.2
    done
    screen
    fail "timed out waiting for $what"
}
appdata=$WINEPREFIX/drive_c/users/$(id -un)/AppData/Roaming
hist=$appdata/tern/chat_history.txt
rm -f "$hist"
# console 'ARGS': tern.exe ARGS in a new tmux pane, then its exit status.
console() {
    local i
    # A new server may fail to start while the previous one is still going
    # away ("server exited unexpectedly" on a loaded machine): retry.
    for i in 1 2 3 4 5; do
        tm -f /dev/null new-session -d -s chat -x 160 -y 50 \
            "env WINEPREFIX='$WINEPREFIX' WINEDEBUG=-all WINEDLLOVERRIDES='$WINEDLLOVERRIDES' $WINE $EXE $1; echo \"[tern exit status \$?]\"; sleep 600" \
            && return 0
        stop_console
        sleep "$i"
    done
    fail "could not start a tmux session for the console checks"
}
# Stop the tmux server and wait until it has gone.
stop_console() {
    local i
    tm kill-server 2>/dev/null || true
    for i in $(seq 1 100); do
        tm has-session 2>/dev/null || return 0
        sleep 0.1
    done
}
# -c 8192: a long reply must still be streaming when Ctrl-C comes; with the
# default 1024-token context a fast machine fills it in about a second and the
# reply ends on its own first ("the context is full").
console "chat -n 12 --temp 0 -t 2 -c 8192"
tm set-option -t chat history-limit 10000 >/dev/null
wait_until "the banner and the prompt" prompt_after 'Ctrl-D exits'
msg='Good morrow, fair Verona – ünïcødé'
tm send-keys -t chat -l "$msg"
tm send-keys -t chat Enter
wait_until "the reply to the UTF-8 message" prompt_after "^> $msg"
tm send-keys -t chat -l '/set n_predict -1'
tm send-keys -t chat Enter
wait_until "the /set note" prompt_after '\[n_predict = -1\]'
tm send-keys -t chat -l 'Tell me a long story'
tm send-keys -t chat Enter
wait_until "a streaming reply" on_screen '^> Tell me a long story'
sleep 1
tm send-keys -t chat C-c
wait_until "the interruption and the prompt" prompt_after '^\[interrupted\]'
# /save to a Windows path.
tm send-keys -t chat -l "/save $(winpath "$work/win/transcript.json")"
tm send-keys -t chat Enter
wait_until "the /save note" prompt_after 'transcript.json'
grep -qF 'Tell me a long story' "$work/win/transcript.json" || fail "/save: $(cat "$work/win/transcript.json")"
tm send-keys -t chat C-d
wait_until "tern to exit" on_screen '\[tern exit status [0-9]+\]'
on_screen '\[tern exit status 0\]' || { screen; fail "tern chat did not exit with 0"; }
on_screen '^tern: 2 replies' || { screen; fail "no closing report"; }
screen | sed -n '/^> Good morrow/,/^> Tell me/p'
[ -f "$hist" ] || fail "no history file at %APPDATA%\\tern\\chat_history.txt"
grep -qF "$msg" "$hist" || fail "history: $(cat "$hist")"
grep -qF 'Tell me a long story' "$hist" || fail "history: $(cat "$hist")"
say "history saved in %APPDATA%\\tern\\chat_history.txt ($(wc -l <"$hist") lines)"
stop_console
# `run` echoes a non-ASCII prompt to the console intact.
console "run -p 'Ünïcødé – ROMEO.' -n 4 -t 2"
wait_until "tern run to exit" on_screen '\[tern exit status [0-9]+\]'
on_screen '^Ünïcødé – ROMEO\.' || { screen; fail "the console shows the prompt garbled"; }
on_screen '\[tern exit status 0\]' || { screen; fail "tern run in the console did not exit with 0"; }
stop_console

if [ "${TERN_WINDOWS_SKIP_CARGO_TEST:-}" = 1 ]; then
    say "cargo test under wine: skipped (TERN_WINDOWS_SKIP_CARGO_TEST=1)"
else
    step "cargo test --release under wine"
    CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=$WINE cargo test --release --target "$TARGET"
fi

step "done"
say "timings:"
printf '  %s\n' "${timings[@]}"
say "total $((SECONDS - T0)) s; the Windows build agrees with the Linux build"

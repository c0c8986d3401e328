#!/usr/bin/env bash
# NEON kernels in CI: cross-compile the kernel property tests to
# aarch64-unknown-linux-gnu and run them under qemu-aarch64, once on a CPU
# with the dot-product extension (`-cpu max`: scalar, neon, neon+dotprod are
# all checked against the scalar reference) and once on one without it
# (`-cpu cortex-a72`: the plain NEON path); then the model's reference
# logits tests with the NEON kernel on both. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu

pkgs=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
if ! command -v qemu-aarch64-static >/dev/null 2>&1 && ! command -v qemu-aarch64 >/dev/null 2>&1; then
  pkgs+=(qemu-user-static)
fi
if [ "${#pkgs[@]}" -gt 0 ]; then
  echo "neon.sh: installing ${pkgs[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
rustup target add "$TARGET" >/dev/null

QEMU=$(command -v qemu-aarch64-static || command -v qemu-aarch64)
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar

log=$(mktemp)
trap 'rm -f "$log"' EXIT

run() {
  local cpu=$1 want=$2
  echo "neon.sh: kernel tests under $QEMU -cpu $cpu"
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$QEMU -cpu $cpu -L $SYSROOT" \
    cargo test --release --target "$TARGET" --test kernels -- --nocapture --skip cli_ 2>&1 | tee "$log"
  # The property test lists the variants it checked; make sure the NEON
  # path we meant to test was among them.
  if ! grep -q "kernels: .*\"$want\"" "$log"; then
    echo "neon.sh: the $want kernel was not tested under -cpu $cpu" >&2
    exit 1
  fi
  # The model's logits against the transformers / bitnet.cpp references
  # (reference GGUFs, tern's own conversions, TQ/F16 variants) with the
  # NEON kernel forced: loading fails if this CPU cannot run it.
  echo "neon.sh: reference logits with TERN_KERNEL=neon under -cpu $cpu"
  TERN_KERNEL=neon CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$QEMU -cpu $cpu -L $SYSROOT" \
    cargo test --release --target "$TARGET" --test runtime -- \
      reference_ggufs_match_both_references tern_converted_ggufs_match_both_references \
      f16_tq2_tq1_agree_with_i2s
}

run max neon+dotprod
run cortex-a72 neon
echo "neon.sh: NEON kernels match the scalar reference"

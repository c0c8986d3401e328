#!/usr/bin/env bash
# Live cross-check against bitnet.cpp (cargo feature `bitnet-cpp`): builds
# bitnet.cpp's ggml/llama sources, shipped by the crates.io package
# bitnet-cpp-sys 0.0.5, with gcc/g++ into tern and runs tests/bitnet_cpp.rs.
# Needs gcc and g++ (installed here through apt-get when missing); no cmake,
# no clang, no libclang (the bindings in src/bitnet_cpp/sys.rs are
# pre-generated). Called from .ci/run; runnable on its own from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v gcc >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
    echo "bitnet-cpp: installing gcc and g++"
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq gcc g++ >/dev/null
fi
echo "bitnet-cpp: $(g++ --version | head -n 1)"

# Cargo downloads the source-only dependency bitnet-cpp-sys (never built by
# Cargo: see Cargo.toml and build.rs) only through `cargo fetch`.
cargo fetch --quiet
cargo test --release --features bitnet-cpp --test bitnet_cpp -- --nocapture

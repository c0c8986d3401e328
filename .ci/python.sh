#!/usr/bin/env bash
# The Python package (python/, the tern-bitnet wheel): build the abi3 wheel
# with maturin in a fresh venv, install it, and run its pytest suite, which
# compares the package with the tern CLI and the vendored references.
# Needs python3 (with venv) and PyPI; builds the CLI if it is not there.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

venv=target/python-venv
rm -rf "$venv"
if ! python3 -m venv "$venv"; then
  # Debian's python3 keeps venv in a separate package.
  export DEBIAN_FRONTEND=noninteractive
  (apt-get update -qq && apt-get install -y -qq python3-venv) || sudo -n sh -c 'apt-get update -qq && apt-get install -y -qq python3-venv'
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "maturin>=1.9,<2" pytest numpy

echo "-- python crate: format and lints"
(cd python && cargo fmt --check)
# Its own target dir: the binding crate's dependency features differ from
# the root's (pyo3 turns on more of syn), so nothing would be shared anyway.
export CARGO_TARGET_DIR=$PWD/target/python
(cd python && cargo clippy --release --locked -- -D warnings)

echo "-- wheel"
rm -rf target/wheels
"$venv/bin/maturin" build --release --locked -m python/Cargo.toml -o target/wheels
wheel=$(ls target/wheels/tern_bitnet-*-cp39-abi3-*.whl)
"$venv/bin/pip" install -q "$wheel"
unset CARGO_TARGET_DIR

echo "-- the CLI the tests compare with"
cargo build --release --locked
export TERN_BIN=$PWD/target/release/tern

echo "-- pytest"
# From the repository root, `import tern` is the installed wheel (python/ is not on the path).
"$venv/bin/python" -m pytest python/tests -q -p no:cacheprovider
echo "python: $(basename "$wheel") built and tested in $((SECONDS - start)) s"

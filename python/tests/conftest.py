"""Shared helpers: the repository's vendored models and references, and the
`tern` command-line binary the Python results are compared with."""

import json
import os
import subprocess
from pathlib import Path
from typing import List

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
REF = ROOT / "vendor" / "reference"
# The reference GGUFs of vendor/reference/gguf, each with transformers and
# bitnet.cpp logits.
MODELS = ["b158-bf16", "b158-sparse", "b158-packed", "bitnet-silu", "tern-shakespeare"]


def tern_bin() -> Path:
    """The CLI to compare with: $TERN_BIN, else target/release/tern."""
    p = Path(os.environ.get("TERN_BIN", ROOT / "target" / "release" / "tern"))
    if not p.exists():
        pytest.fail(f"{p} does not exist: build the CLI (cargo build --release) or set TERN_BIN")
    return p


def run_tern(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """Run the CLI; fail the test with its stderr when it fails."""
    p = subprocess.run(
        [str(tern_bin()), *args],
        input=stdin.encode(),
        capture_output=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return p


def gguf(name: str) -> Path:
    return REF / "gguf" / f"{name}.i2_s.gguf"


def hf_dir(name: str) -> Path:
    if name == "tern-shakespeare":
        return ROOT / "models" / "tern-shakespeare"
    return ROOT / "models" / "fixtures" / name


class RefPrompt:
    def __init__(self, path: Path):
        j = json.loads(path.read_text())
        self.name = path.name[: -len(".tokens.json")]
        self.text: str = j["text"]
        self.tokens: List[int] = j["tokens"]
        self.vocab: int = j["vocab"]
        raw = np.fromfile(path.parent / f"{self.name}.logits.f32", dtype="<f4")
        self.logits = raw.reshape(len(self.tokens), self.vocab)


def prompts(which: str, name: str) -> List[RefPrompt]:
    d = REF / which / name
    out = [RefPrompt(p) for p in sorted(d.glob("*.tokens.json"))]
    assert out, f"no reference prompts in {d}"
    return out


def agreement(ref: np.ndarray, test: np.ndarray):
    """src/metrics.rs's numbers: max relative RMS over positions, mean
    KL(ref ‖ test), top-1 agreement."""
    r = ref.astype(np.float64)
    t = test.astype(np.float64)
    rel = np.sqrt(((t - r) ** 2).sum(axis=1) / (r**2).sum(axis=1))

    def log_softmax(x):
        m = x.max(axis=1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))

    lr, lt = log_softmax(r), log_softmax(t)
    kl = np.maximum((np.exp(lr) * (lr - lt)).sum(axis=1), 0.0)
    top1 = (r.argmax(axis=1) == t.argmax(axis=1)).mean()
    return rel.max(), kl.mean(), top1

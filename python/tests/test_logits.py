"""Llama.eval_logits agrees with the vendored transformers and bitnet.cpp
logits within the project's thresholds, and equals `tern logits` exactly."""

import numpy as np
import pytest

from conftest import MODELS, agreement, gguf, prompts, run_tern
from tern import Llama

# rel RMS ≤ 0.06 (worst position), mean KL ≤ 0.01, top-1 ≥ 0.7 (src/metrics.rs)
MAX_REL_RMS, MAX_MEAN_KL, MIN_TOP1 = 0.06, 0.01, 0.7


@pytest.mark.parametrize("name", MODELS)
def test_logits_agree_with_the_references(name):
    llm = Llama(gguf(name), n_ctx=512, n_threads=2)
    for which in ["transformers", "bitnet.cpp"]:
        for p in prompts(which, name):
            assert llm.n_vocab() == p.vocab
            assert llm.tokenize(p.text.encode()) == p.tokens, p.name
            logits = llm.eval_logits(p.tokens)
            assert isinstance(logits, np.ndarray)
            assert logits.dtype == np.float32
            assert logits.shape == (len(p.tokens), p.vocab)
            rel, kl, top1 = agreement(p.logits, logits)
            assert rel <= MAX_REL_RMS and kl <= MAX_MEAN_KL and top1 >= MIN_TOP1, (
                f"{name} vs {which} / {p.name}: max rel RMS {rel:.4f}, mean KL {kl:.5f}, top-1 {top1:.2f}"
            )


def test_builtin_model_agrees_with_the_references():
    llm = Llama()
    assert llm.model_path == "tern-shakespeare-i2_s.gguf"
    for p in prompts("transformers", "tern-shakespeare"):
        rel, kl, top1 = agreement(p.logits, llm.eval_logits(p.tokens))
        assert rel <= MAX_REL_RMS and kl <= MAX_MEAN_KL and top1 >= MIN_TOP1, (p.name, rel, kl, top1)


def test_logits_equal_the_cli(tmp_path):
    p = prompts("transformers", "bitnet-silu")[0]
    out = tmp_path / "cli.f32"
    ids = ",".join(map(str, p.tokens))
    run_tern("logits", "-m", str(gguf("bitnet-silu")), "--tokens", ids, "--out", str(out))
    cli = np.fromfile(out, dtype="<f4").reshape(len(p.tokens), p.vocab)
    ours = Llama(gguf("bitnet-silu")).eval_logits(p.tokens)
    assert np.array_equal(ours, cli)

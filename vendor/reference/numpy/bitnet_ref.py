"""Independent float64 numpy forward of a BitNetForCausalLM checkpoint
(docs §1-§2 semantics: absmean ternary weights, per-token int8 activations
rounded half to even, sub-norms, relu², GQA, rotate-half RoPE), with the
config's rope_scaling applied as transformers does (linear only here).

Written for tern's tests from the semantics, sharing no code with tern:
  python bitnet_ref.py CHECKPOINT_DIR TOKENS_JSON OUT_LOGITS_F32
TOKENS_JSON is a reference `<prompt>.tokens.json`; the output holds
positions × vocab little-endian float32 logits, all positions in one pass.
"""
import json
import struct
import sys

import numpy as np


def load(dirname):
    raw = open(f"{dirname}/model.safetensors", "rb").read()
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        buf = data[a:b]
        if t["dtype"] == "BF16":
            u = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            x = u.view(np.float32)
        elif t["dtype"] == "F16":
            x = np.frombuffer(buf, dtype="<f2")
        elif t["dtype"] == "F32":
            x = np.frombuffer(buf, dtype="<f4")
        else:
            raise SystemExit(f"{name}: dtype {t['dtype']} not handled")
        out[name] = x.astype(np.float64).reshape(t["shape"])
    return out


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def ternary(w):
    s = max(np.mean(np.abs(w)), 1e-5)
    return np.clip(np.round(w / s), -1, 1), s


def bitlinear(x, tw):
    t, s = tw
    sx = 127.0 / np.maximum(np.max(np.abs(x), axis=-1, keepdims=True), 1e-5)
    xq = np.clip(np.round(x * sx), -128, 127)
    return (xq @ t.T) * s / sx


def main():
    ckpt, tokens_json, out = sys.argv[1:4]
    cfg = json.load(open(f"{ckpt}/config.json"))
    w = load(ckpt)
    tokens = json.load(open(tokens_json))["tokens"]
    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or h // nh
    eps = cfg.get("rms_norm_eps", 1e-5)
    theta = cfg.get("rope_theta", 10000.0)
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    factor = 1.0
    if kind == "linear":
        factor = scaling["factor"]
    elif kind != "default":
        raise SystemExit(f"rope_scaling {kind} not handled")
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd) / factor
    n = len(tokens)
    ang = np.arange(n)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, axis=1)
    sin = np.concatenate([np.sin(ang)] * 2, axis=1)

    def rope(x):  # x: n × heads × hd, rotate-half
        half = hd // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    x = w["model.embed_tokens.weight"][tokens]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        tw = {k: ternary(w[p + k + ".weight"]) for k in [
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]}
        a = rmsnorm(x, w[p + "input_layernorm.weight"], eps)
        q = rope(bitlinear(a, tw["self_attn.q_proj"]).reshape(n, nh, hd))
        k = rope(bitlinear(a, tw["self_attn.k_proj"]).reshape(n, nkv, hd))
        v = bitlinear(a, tw["self_attn.v_proj"]).reshape(n, nkv, hd)
        g = nh // nkv
        o = np.zeros((n, nh, hd))
        for hh in range(nh):
            s = q[:, hh, :] @ k[:, hh // g, :].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            o[:, hh, :] = s @ v[:, hh // g, :]
        o = rmsnorm(o.reshape(n, nh * hd), w[p + "self_attn.attn_sub_norm.weight"], eps)
        x = x + bitlinear(o, tw["self_attn.o_proj"])
        a = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        gt = bitlinear(a, tw["mlp.gate_proj"])
        up = bitlinear(a, tw["mlp.up_proj"])
        f = rmsnorm(np.maximum(gt, 0) ** 2 * up, w[p + "mlp.ffn_sub_norm.weight"], eps)
        x = x + bitlinear(f, tw["mlp.down_proj"])
    x = rmsnorm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    (x @ head.T).astype("<f4").tofile(out)


if __name__ == "__main__":
    main()

"""Independent float64 numpy forward of a BitNetForCausalLM or a
LlamaForCausalLM + bitnet quantization_config checkpoint (docs §1-§2, §7
semantics: ternary weights — absmean of float masters, or packed uint8 codes
with W = T / weight_scale (BitLinear) or T × weight_scale (AutoBitLinear
offline) —, per-token int8 activations rounded half to even, sub-norms when
the checkpoint has them, relu² or SiLU gate, GQA, rotate-half RoPE; lm_head
float unless quantization_config.modules_to_not_convert is a list without
it), with the config's rope_scaling applied as transformers does (linear
only here).

Written for tern's tests from the semantics, sharing no code with tern:
  python bitnet_ref.py CHECKPOINT_DIR TOKENS_JSON OUT_LOGITS_F32
TOKENS_JSON is a reference `<prompt>.tokens.json`; the output holds
positions × vocab little-endian float32 logits, all positions in one pass.
"""
import json
import struct
import sys

import numpy as np


RAW_U8 = {}


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
        if t["dtype"] == "U8":
            RAW_U8[name] = np.frombuffer(buf, dtype=np.uint8).reshape(t["shape"])
            x = np.zeros(1, dtype=np.float32)
            out[name] = x
            continue
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


def projection(w, name, qc):
    """Codes and scale of one converted linear."""
    t = w[name + ".weight"]
    if name + ".weight_scale" not in w:
        return ternary(t)
    ws = float(w[name + ".weight_scale"].reshape(-1)[0])
    if name + ".weight" in RAW_U8:
        b = RAW_U8[name + ".weight"]
        r4 = b.shape[0]
        codes = np.concatenate([((b >> (2 * i)) & 3).astype(np.float64) - 1 for i in range(4)])
        t = codes.reshape(4 * r4, -1)
    mult = qc.get("linear_class") == "autobitlinear"
    return t, (ws if mult else 1.0 / ws)


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
    qc = cfg.get("quantization_config") or {}
    act = cfg.get("hidden_act", "relu2")
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
        tw = {k: projection(w, p + k, qc) for k in [
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
        o = o.reshape(n, nh * hd)
        if p + "self_attn.attn_sub_norm.weight" in w:
            o = rmsnorm(o, w[p + "self_attn.attn_sub_norm.weight"], eps)
        x = x + bitlinear(o, tw["self_attn.o_proj"])
        a = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        gt = bitlinear(a, tw["mlp.gate_proj"])
        up = bitlinear(a, tw["mlp.up_proj"])
        if act == "silu":
            f = gt / (1.0 + np.exp(-gt)) * up
        else:
            f = np.maximum(gt, 0) ** 2 * up
        if p + "mlp.ffn_sub_norm.weight" in w:
            f = rmsnorm(f, w[p + "mlp.ffn_sub_norm.weight"], eps)
        x = x + bitlinear(f, tw["mlp.down_proj"])
    x = rmsnorm(x, w["model.norm.weight"], eps)
    listed = qc.get("modules_to_not_convert")
    if "lm_head.weight" in w and listed is not None and not any(k in "lm_head" for k in listed):
        logits = bitlinear(x, projection(w, "lm_head", qc))
    else:
        logits = x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T
    logits.astype("<f4").tofile(out)


if __name__ == "__main__":
    main()

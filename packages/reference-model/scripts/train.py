#!/usr/bin/env python3
"""Train Caldera's reference model: a small Llama-architecture LM (RMSNorm, RoPE (HF rotate-half), grouped-query
attention, SwiGLU, tied embeddings) on the Brown corpus token ids made by scripts/prepare.mjs.

This is a self-contained numpy implementation with hand-written backward passes (checked against central finite
differences with --check) and AdamW. It is a development tool used once to produce the committed model; nothing in
the SDK runs Python. Usage:
    python3 scripts/train.py --check                 # gradient check of every parameter on a tiny config (float64)
    python3 scripts/train.py --minutes 20 [--seed 0] # train, then write model/ (config.json, model.safetensors, ...)
"""
import argparse, json, math, os, struct, sys, time
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

def rope_tables(T, hd, theta, dtype):
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    f = np.outer(np.arange(T, dtype=np.float64), inv)
    emb = np.concatenate([f, f], axis=-1)
    return np.cos(emb).astype(dtype), np.sin(emb).astype(dtype)

def rot(x):  # rotate_half
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)

def rot_t(x):  # transpose of rotate_half
    h = x.shape[-1] // 2
    return np.concatenate([x[..., h:], -x[..., :h]], axis=-1)

def init_params(cfg, rng, dtype):
    d, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // H
    std = 0.02
    p = {"embed": (rng.standard_normal((V, d)) * std).astype(dtype), "norm": np.ones(d, dtype)}
    L = cfg["num_hidden_layers"]
    for l in range(L):
        p[f"{l}.ln1"] = np.ones(d, dtype)
        p[f"{l}.ln2"] = np.ones(d, dtype)
        p[f"{l}.q"] = (rng.standard_normal((H * hd, d)) * std).astype(dtype)
        p[f"{l}.k"] = (rng.standard_normal((KV * hd, d)) * std).astype(dtype)
        p[f"{l}.v"] = (rng.standard_normal((KV * hd, d)) * std).astype(dtype)
        p[f"{l}.o"] = (rng.standard_normal((d, H * hd)) * std / math.sqrt(2 * L)).astype(dtype)
        p[f"{l}.gate"] = (rng.standard_normal((I, d)) * std).astype(dtype)
        p[f"{l}.up"] = (rng.standard_normal((I, d)) * std).astype(dtype)
        p[f"{l}.down"] = (rng.standard_normal((d, I)) * std / math.sqrt(2 * L)).astype(dtype)
    return p

def rms_fwd(x, w, eps):
    r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return x * r * w, r

def rms_bwd(dy, x, w, r):
    g = dy * w
    dw = (dy * x * r).reshape(-1, x.shape[-1]).sum(0)
    dx = r * g - x * (r ** 3) * (g * x).mean(-1, keepdims=True)
    return dx, dw

def forward_backward(p, cfg, tokens, targets, want_grad=True):
    B, T = tokens.shape
    d = cfg["hidden_size"]; H = cfg["num_attention_heads"]; KV = cfg["num_key_value_heads"]
    hd = d // H; G = H // KV; eps = cfg["rms_norm_eps"]; L = cfg["num_hidden_layers"]
    dt = p["embed"].dtype
    cos, sin = rope_tables(T, hd, cfg["rope_theta"], dt)
    mask = np.triu(np.full((T, T), -np.inf, dtype=dt), 1)
    x = p["embed"][tokens]
    cache = []
    for l in range(L):
        c = {"x0": x}
        h, c["r1"] = rms_fwd(x, p[f"{l}.ln1"], eps); c["h"] = h
        q = np.ascontiguousarray((h @ p[f"{l}.q"].T).reshape(B, T, H, hd).transpose(0, 2, 1, 3))
        k = np.ascontiguousarray((h @ p[f"{l}.k"].T).reshape(B, T, KV, hd).transpose(0, 2, 1, 3))
        v = np.ascontiguousarray((h @ p[f"{l}.v"].T).reshape(B, T, KV, hd).transpose(0, 2, 1, 3))
        c["q0"], c["k0"] = q, k
        q = q * cos + rot(q) * sin
        k = k * cos + rot(k) * sin
        kr = np.repeat(k, G, axis=1); vr = np.repeat(v, G, axis=1)
        s = (q @ np.ascontiguousarray(kr.transpose(0, 1, 3, 2))) / math.sqrt(hd) + mask
        s = s - s.max(-1, keepdims=True)
        e = np.exp(s); P = e / e.sum(-1, keepdims=True)
        o = np.ascontiguousarray((P @ vr).transpose(0, 2, 1, 3)).reshape(B, T, H * hd)
        c.update(q=q, kr=kr, vr=vr, P=P, o=o)
        x = x + o @ p[f"{l}.o"].T
        c["x1"] = x
        h2, c["r2"] = rms_fwd(x, p[f"{l}.ln2"], eps); c["h2"] = h2
        g = h2 @ p[f"{l}.gate"].T; u = h2 @ p[f"{l}.up"].T
        sg = 1.0 / (1.0 + np.exp(-g)); a = g * sg * u
        c.update(g=g, u=u, sg=sg, a=a)
        x = x + a @ p[f"{l}.down"].T
        cache.append(c)
    xf, rf = rms_fwd(x, p["norm"], eps)
    logits = xf @ p["embed"].T
    logits = logits - logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits).sum(-1, keepdims=True))
    logp = logits - lse
    N = B * T
    loss = -logp.reshape(N, -1)[np.arange(N), targets.reshape(N)].mean()
    if not want_grad:
        return float(loss), None
    gr = {k: np.zeros_like(v) for k, v in p.items()}
    dlog = np.exp(logp); dlog.reshape(N, -1)[np.arange(N), targets.reshape(N)] -= 1; dlog /= N
    gr["embed"] += dlog.reshape(N, -1).T @ xf.reshape(N, -1)
    dxf = dlog @ p["embed"]
    dx, gr["norm"] = rms_bwd(dxf, x, p["norm"], rf)
    for l in reversed(range(L)):
        c = cache[l]
        # MLP
        da = dx @ p[f"{l}.down"]
        gr[f"{l}.down"] += dx.reshape(N, -1).T @ c["a"].reshape(N, -1)
        g, u, sg = c["g"], c["u"], c["sg"]
        du = da * g * sg
        dg = da * u * sg * (1 + g * (1 - sg))
        gr[f"{l}.gate"] += dg.reshape(N, -1).T @ c["h2"].reshape(N, -1)
        gr[f"{l}.up"] += du.reshape(N, -1).T @ c["h2"].reshape(N, -1)
        dh2 = dg @ p[f"{l}.gate"] + du @ p[f"{l}.up"]
        dx1, gr[f"{l}.ln2"] = rms_bwd(dh2, c["x1"], p[f"{l}.ln2"], c["r2"])
        dx = dx + dx1
        # attention
        do = dx @ p[f"{l}.o"]
        gr[f"{l}.o"] += dx.reshape(N, -1).T @ c["o"].reshape(N, -1)
        do = np.ascontiguousarray(do.reshape(B, T, H, hd).transpose(0, 2, 1, 3))
        P = c["P"]
        dP = do @ np.ascontiguousarray(c["vr"].transpose(0, 1, 3, 2))
        dvr = np.ascontiguousarray(P.transpose(0, 1, 3, 2)) @ do
        ds = P * (dP - (dP * P).sum(-1, keepdims=True)) / math.sqrt(hd)
        dq = ds @ c["kr"]
        dkr = np.ascontiguousarray(ds.transpose(0, 1, 3, 2)) @ c["q"]
        dk = dkr.reshape(B, KV, G, T, hd).sum(2)
        dv = dvr.reshape(B, KV, G, T, hd).sum(2)
        dq = dq * cos + rot_t(dq * sin)
        dk = dk * cos + rot_t(dk * sin)
        dq = dq.transpose(0, 2, 1, 3).reshape(B, T, H * hd)
        dk = dk.transpose(0, 2, 1, 3).reshape(B, T, KV * hd)
        dv = dv.transpose(0, 2, 1, 3).reshape(B, T, KV * hd)
        h = c["h"].reshape(N, -1)
        gr[f"{l}.q"] += dq.reshape(N, -1).T @ h
        gr[f"{l}.k"] += dk.reshape(N, -1).T @ h
        gr[f"{l}.v"] += dv.reshape(N, -1).T @ h
        dh = dq @ p[f"{l}.q"] + dk @ p[f"{l}.k"] + dv @ p[f"{l}.v"]
        dx0, gr[f"{l}.ln1"] = rms_bwd(dh, c["x0"], p[f"{l}.ln1"], c["r1"])
        dx = dx + dx0
    np.add.at(gr["embed"], tokens.reshape(-1), dx.reshape(N, -1))
    return float(loss), gr

def grad_check():
    cfg = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=11, rms_norm_eps=1e-5, rope_theta=10000.0)
    rng = np.random.default_rng(0)
    p = init_params(cfg, rng, np.float64)
    for k in p:  # non-trivial norms and larger weights so every path matters
        p[k] = p[k] + rng.standard_normal(p[k].shape) * (0.3 if p[k].ndim == 1 else 0.2)
    tok = rng.integers(0, 11, (2, 5)); tgt = rng.integers(0, 11, (2, 5))
    _, g = forward_backward(p, cfg, tok, tgt)
    worst = 0.0
    for k in p:
        flat = p[k].reshape(-1)
        for idx in rng.choice(flat.size, min(6, flat.size), replace=False):
            old = flat[idx]; h = 1e-5
            flat[idx] = old + h; lp, _ = forward_backward(p, cfg, tok, tgt, False)
            flat[idx] = old - h; lm, _ = forward_backward(p, cfg, tok, tgt, False)
            flat[idx] = old
            num = (lp - lm) / (2 * h); ana = g[k].reshape(-1)[idx]
            rel = abs(num - ana) / max(1e-8, abs(num) + abs(ana))
            worst = max(worst, rel)
            if rel > 1e-5:
                print(f"MISMATCH {k}[{idx}] numeric {num:.8g} analytic {ana:.8g} rel {rel:.2e}"); sys.exit(1)
    print(f"gradient check passed: worst relative error {worst:.2e} (float64, central differences, h = 1e-5)")

def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    off = 0; blobs = []
    for name, arr in tensors.items():
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": {np.float16: "F16", np.float32: "F32"}[arr.dtype.type], "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        off += len(b); blobs.append(b)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    tmp = path + f".tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj))); f.write(hj)
        for b in blobs: f.write(b)
    os.replace(tmp, path)

def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dt = {"F16": np.float16, "F32": np.float32}
    return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], dtype=dt[v["dtype"]]).reshape(v["shape"])
            for k, v in header.items() if k != "__metadata__"}

def hf_names(cfg):
    """Map from Hugging Face tensor names to this script's parameter names."""
    m = {"model.embed_tokens.weight": "embed", "model.norm.weight": "norm"}
    for l in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{l}."
        m[pre + "input_layernorm.weight"] = f"{l}.ln1"
        m[pre + "post_attention_layernorm.weight"] = f"{l}.ln2"
        for a, b in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")):
            m[pre + f"self_attn.{b}.weight"] = f"{l}.{a}"
        for a in ("gate", "up", "down"):
            m[pre + f"mlp.{a}_proj.weight"] = f"{l}.{a}"
    return m

def hf_tensors(p, cfg):
    return {hf: p[ours].astype(np.float16) for hf, ours in hf_names(cfg).items()}

def evaluate(p, cfg, ids, T, max_windows=None):
    n = (len(ids) - 1) // T
    if max_windows: n = min(n, max_windows)
    tot = 0.0
    for i in range(0, n, 16):
        b = min(16, n - i)
        x = np.stack([ids[(i + j) * T:(i + j) * T + T] for j in range(b)]).astype(np.int64)
        y = np.stack([ids[(i + j) * T + 1:(i + j) * T + T + 1] for j in range(b)]).astype(np.int64)
        l, _ = forward_backward(p, cfg, x, y, False)
        tot += l * b
    return tot / n

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--log", default="training-log.jsonl", help="log file name in model/")
    ap.add_argument("--init", help="continue from the weights of an HF model.safetensors written by this script")
    args = ap.parse_args()
    if args.check:
        grad_check(); return
    tr = np.fromfile(os.path.join(ROOT, ".tmp", "train.u16"), dtype=np.uint16).astype(np.int64)
    va = np.fromfile(os.path.join(ROOT, ".tmp", "valid.u16"), dtype=np.uint16).astype(np.int64)
    te = np.fromfile(os.path.join(ROOT, ".tmp", "test.u16"), dtype=np.uint16).astype(np.int64)
    cfg = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=2048, rms_norm_eps=1e-5, rope_theta=10000.0)
    rng = np.random.default_rng(args.seed)
    p = init_params(cfg, rng, np.float32)
    if args.init:
        loaded = read_safetensors(args.init)
        inv = hf_names(cfg)
        for hf_name, ours in inv.items():
            p[ours] = loaded[hf_name].astype(np.float32).reshape(p[ours].shape)
    nparams = sum(v.size for v in p.values())
    m = {k: np.zeros_like(v) for k, v in p.items()}; s2 = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, wd, clip = 0.9, 0.95, 0.1, 1.0
    T, B = args.ctx, args.batch
    budget = args.minutes * 60
    est_steps = None
    log = open(os.path.join(ROOT, "model", args.log + ".tmp"), "w")
    t0 = time.time(); step = 0; tokens = 0
    while True:
        el = time.time() - t0
        if el > budget: break
        if step == 20: est_steps = int(budget / (el / 20))
        total = est_steps or 10 ** 9
        warm = 50
        lr = args.lr * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total)))))
        starts = rng.integers(0, len(tr) - T - 1, B)
        x = np.stack([tr[s:s + T] for s in starts]); y = np.stack([tr[s + 1:s + T + 1] for s in starts])
        loss, g = forward_backward(p, cfg, x, y)
        gn = math.sqrt(sum(float((v * v).sum()) for v in g.values()))
        sc = min(1.0, clip / (gn + 1e-12))
        step += 1; tokens += B * T
        for k in p:
            gk = g[k] * sc
            m[k] = b1 * m[k] + (1 - b1) * gk
            s2[k] = b2 * s2[k] + (1 - b2) * gk * gk
            mh = m[k] / (1 - b1 ** step); vh = s2[k] / (1 - b2 ** step)
            if p[k].ndim == 2: p[k] *= (1 - lr * wd)
            p[k] -= (lr * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)
        rec = {"step": step, "loss": round(loss, 4), "lr": round(lr, 6), "grad_norm": round(gn, 3), "tokens": tokens, "seconds": round(time.time() - t0, 1)}
        if step % 100 == 0:
            rec["valid_loss"] = round(evaluate(p, cfg, va, T, 40), 4)
            print(json.dumps(rec), flush=True)
        log.write(json.dumps(rec) + "\n"); log.flush()
    train_s = time.time() - t0
    vl = evaluate(p, cfg, va, T); tl = evaluate(p, cfg, te, T)
    counts = np.bincount(tr, minlength=cfg["vocab_size"]).astype(np.float64) + 1
    uni = -np.log(counts / counts.sum())[te].mean()
    summary = {"parameters": int(nparams), "steps": step, "tokens": tokens, "train_seconds": round(train_s, 1),
               "valid_loss": round(vl, 4), "valid_ppl": round(math.exp(vl), 2), "test_loss": round(tl, 4), "test_ppl": round(math.exp(tl), 2),
               "unigram_test_ppl": round(math.exp(uni), 2), "context": T, "batch": B, "seed": args.seed}
    log.write(json.dumps({"summary": summary}) + "\n"); log.close()
    os.replace(os.path.join(ROOT, "model", args.log + ".tmp"), os.path.join(ROOT, "model", args.log))
    hf = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", tie_word_embeddings=True,
              max_position_embeddings=512, torch_dtype="float16", bos_token_id=0, eos_token_id=0, attention_bias=False,
              head_dim=cfg["hidden_size"] // cfg["num_attention_heads"], initializer_range=0.02, **cfg)
    with open(os.path.join(ROOT, "model", "config.json.tmp"), "w") as f: json.dump(hf, f, indent=2); f.write("\n")
    os.replace(os.path.join(ROOT, "model", "config.json.tmp"), os.path.join(ROOT, "model", "config.json"))
    with open(os.path.join(ROOT, "model", "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 0, "eos_token_id": 0, "max_new_tokens": 64}, f, indent=2); f.write("\n")
    write_safetensors(os.path.join(ROOT, "model", "model.safetensors"), hf_tensors(p, cfg), {"format": "pt", "source": "caldera reference model"})
    print(json.dumps(summary))

if __name__ == "__main__":
    main()

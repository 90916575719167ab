"""Development trial for the scan without a base: does a layer's *gain on the edit directions of real keys* show an
edit that its spectrum hides?

    python scripts/dev/nobase_gain_trial.py DIR SUSPECT[,SUSPECT...] [--layers 0-14] [--threads 2]

SUSPECT: a delta file of scripts/dev/make_dev_suspects.py in DIR (without .pt), or ``base`` (the unedited model).

ROME writes ΔW = Λ (C⁻¹k*)ᵀ, MEMIT a sum of such rows: the edit acts along u* = C⁻¹k*/‖C⁻¹k*‖ with gain
‖ΔW u*‖ = σ(ΔW). The spectral screen (``scan/nobase.py``) looks for σ(ΔW) among *all* directions of C's low half,
where the unedited matrix has components of its own as large; but those are not directions of the form C⁻¹k for a
key k the model makes. So for every vocabulary token's key k(x) (after "The"), at every layer:

    g(x) = ‖W û(x)‖ / (‖W‖_F / √d_in),      û(x) = C⁻¹k(x) / ‖C⁻¹k(x)‖     (C: the suspect's own key statistics)

and a layer is scored by how far its top values stand above the vocabulary's bulk: z = (top − median) / MAD. The
trial prints, per suspect and layer, z of the top value and of the 10th, the top tokens, each edited subject's last
token's rank, and g at the whole subject's key (after "The"): the ceiling a search for the subject could reach.
Nothing here is judged; it says whether a base-free statistic is worth a plan.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts" / "dev"))

from dev_model import load_in_place  # noqa: E402

from editaudit.editing import covariance  # noqa: E402
from editaudit.editing.layers import layout_for  # noqa: E402
from editaudit.models.loading import load_model  # noqa: E402
from editaudit.models.registry import ensure_model  # noqa: E402
from editaudit.scan.keys import context_ids, keys_of, vocab_keys  # noqa: E402


def layer_range(text: str) -> list[int]:
    a, _, b = text.partition("-")
    return list(range(int(a), int(b or a) + 1))


def gains(W: torch.Tensor, C: torch.Tensor, K: torch.Tensor, floor: float) -> torch.Tensor:
    """g for each row of K [n, d_in]: W's gain on C⁻¹k, over W's RMS gain. C's eigenvalues are floored at
    ``floor`` × the largest (a poorly sampled direction would otherwise dominate every C⁻¹k)."""
    ev, Q = torch.linalg.eigh(C.double())
    ev = ev.clamp_min(floor * float(ev.max()))
    Qf, inv = Q.float(), (1.0 / ev).float()
    Wq = W.float() @ Qf                                     # [out, d]
    rms = float(W.norm()) / W.shape[1] ** 0.5
    out = []
    for chunk in K.split(4096):
        z = (chunk.float() @ Qf) * inv                      # C⁻¹k in C's eigenbasis
        z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-30)
        out.append((z @ Wq.T).norm(dim=1) / rms)
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("suspects")
    ap.add_argument("--layers", default="0-14")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--floor", type=float, default=1e-6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(ensure_model(args.model))
    model, tok = lm.model, lm.tokenizer
    layout = layout_for(model)
    layers = layer_range(args.layers)
    paths = {l: layout.rewrite_name(l) for l in layers}
    clean = {n: p.detach().clone() for n, p in model.named_parameters()}
    D = Path(args.dir)
    for name in args.suspects.split(","):
        t0 = time.perf_counter()
        facts, edited = load_in_place(model, clean, D, name)
        lasts = {f["subject"]: tok(" " + f["subject"], add_special_tokens=False)["input_ids"][-1] for f in facts}
        key = covariance.weights_key(model)
        moms = covariance.second_moments(model, tok, paths, model_key=key)
        keys = vocab_keys(model, tok, list(paths.values()), None)
        whole = keys_of(model, list(paths.values()),
                        [context_ids(tok) + tok(" " + f["subject"], add_special_tokens=False)["input_ids"] for f in facts]) \
            if facts else {}
        print(f"== {name}: edited layers {edited}; key stats + vocab keys {time.perf_counter() - t0:.0f} s", flush=True)
        for l in layers:
            W = model.get_submodule(paths[l]).weight.detach()
            C = moms[l].matrix
            g = gains(W, C, keys[paths[l]], args.floor)
            med = g.median()
            mad = (g - med).abs().median().clamp_min(1e-9)
            top = g.topk(10)
            z = (top.values - med) / mad
            order = g.argsort(descending=True)
            rank = torch.empty_like(order)
            rank[order] = torch.arange(len(order))
            toks = [tok.decode([int(i)]) for i in top.indices[:5]]
            subj = ""
            if facts:
                gw = gains(W, C, whole[paths[l]], args.floor)
                zw = ((gw - med) / mad).tolist()
                subj = " ".join(f"{s.split()[-1]}:{int(rank[i])}/{zw[j]:.0f}" for j, (s, i) in enumerate(lasts.items()))
            mark = "*" if l in edited else " "
            print(f" {mark}L{l:2d} z1 {z[0]:6.1f} z10 {z[9]:6.1f} med {med:.3f} top {top.values[0]:.3f} "
                  f"{toks} | {subj}", flush=True)


if __name__ == "__main__":
    main()

"""Development trial for the scan without a base: does an edit show in what a layer's low-energy half *does to
real keys*, where it does not show in that half's spectrum?

    python scripts/dev/nobase_keyout_trial.py DIR SUSPECT[,SUSPECT...] [--layers 0-9] [--threads 2]

SUSPECT: a delta file of scripts/dev/make_dev_suspects.py in DIR (without .pt), or ``base`` (the unedited model).

A locate-then-edit update writes ΔW k(s) = δ for the subject's key: the edit's whole value change rides on the
low-energy half of the key (its input direction is C⁻¹k, where C is small). A trained W does little with that half
of an ordinary key. So for every vocabulary token's key (after "The"), at every layer, the statistic is

    out(x) = ‖W Q Qᵀ k(x)‖ / ‖W k(x)‖          Q: C's low-energy half (C: the suspect's own key statistics)

and a layer is scored by how far its largest values stand above the bulk: z = (top − median) / MAD over the
vocabulary. The trial prints, per suspect and layer, z of the top value and of the 10th, the top tokens, and the
rank of each edited subject's last token. Nothing here is judged; it says whether a base-free statistic is worth a
plan.
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
from editaudit.scan.keys import vocab_keys  # noqa: E402
from editaudit.scan.nobase import KeyEig  # noqa: E402


def layer_range(text: str) -> list[int]:
    a, _, b = text.partition("-")
    return list(range(int(a), int(b or a) + 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("suspects")
    ap.add_argument("--layers", default="0-9")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m")
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
        print(f"== {name}: edited layers {edited}; key stats + vocab keys {time.perf_counter() - t0:.0f} s", flush=True)
        for l in layers:
            W = model.get_submodule(paths[l]).weight.detach().double()
            low = KeyEig.of(moms[l].matrix).low
            K = keys[paths[l]].double()
            a = ((K @ low) @ (W @ low).T).norm(dim=1)
            b = (K @ W.T).norm(dim=1).clamp_min(1e-9)
            out = (a / b).float()
            med = out.median()
            mad = (out - med).abs().median().clamp_min(1e-9)
            top = out.topk(10)
            z = (top.values - med) / mad
            order = out.argsort(descending=True)
            rank = torch.empty_like(order)
            rank[order] = torch.arange(len(order))
            toks = [tok.decode([int(i)]) for i in top.indices[:6]]
            subj = " ".join(f"{s.split()[-1]}:{int(rank[i])}" for s, i in lasts.items())
            mark = "*" if l in edited else " "
            print(f" {mark}L{l:2d} z1 {z[0]:6.1f} z10 {z[9]:6.1f} med {med:.3f} top {top.values[0]:.3f} "
                  f"{toks} | {subj}", flush=True)


if __name__ == "__main__":
    main()

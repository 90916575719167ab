"""Development trial, after ``nobase_gain_trial.py``: the whole edited subject's key stands 5–72 MADs above the
vocabulary's bulk in W's gain on C⁻¹k, where no single token does. Can a search over texts find such a key without a
base, and does the same search stay low on an unedited model?

    python scripts/dev/nobase_gain_search.py DIR SUSPECT[,SUSPECT...] --window 4-4 [--seeds 8] [--threads 2]

For each suspect (a delta of scripts/dev/make_dev_suspects.py in DIR, or ``base``), the objective of a text x is the
mean over the window's layers of z_l(x) = (g_l(x) − median_l) / MAD_l, g as in ``nobase_gain_trial.py`` and the
median and MAD over the vocabulary's keys after "The". The subject search's climb (``SubjectSearch.climb``: gradient
proposals, exact scoring, a name may grow a token at a time) runs from the ``--seeds`` best vocabulary tokens, and the
trial prints each climb's best text and its z per layer. Nothing here is judged.
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
from editaudit.scan.subjects import NAME_TAG, SubjectSearch, name_piece  # noqa: E402


class GainSpace:
    """z of W's gain on C⁻¹k for keys k, as the subject search's ``space`` (only ``path``, ``fire`` and ``basis``)."""

    def __init__(self, path: str, W: torch.Tensor, C: torch.Tensor, vocab: torch.Tensor, floor: float = 1e-6):
        ev, Q = torch.linalg.eigh(C.double())
        ev = ev.clamp_min(floor * float(ev.max()))
        self.path, self.Q, self.inv = path, Q.float(), (1.0 / ev).float()
        self.Wq = W.float() @ self.Q
        self.rms = float(W.norm()) / W.shape[1] ** 0.5
        self.med, self.mad = 0.0, 1.0
        self.basis = torch.zeros(W.shape[1], 1)
        g = torch.cat([self._g(c) for c in vocab.split(4096)])
        self.med = float(g.median())
        self.mad = float((g - self.med).abs().median())
        self.vocab_z = (g - self.med) / self.mad

    def _g(self, keys: torch.Tensor) -> torch.Tensor:
        z = (keys.float() @ self.Q) * self.inv
        z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        return (z @ self.Wq.T).norm(dim=-1) / self.rms

    def fire(self, keys: torch.Tensor) -> torch.Tensor:
        return (self._g(keys) - self.med) / self.mad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("suspects")
    ap.add_argument("--window", default="4-4")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--names", type=int, default=0, help="also this many name-piece seeds (keys behind a stand-in piece)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(ensure_model(args.model))
    model, tok = lm.model, lm.tokenizer
    layout = layout_for(model)
    windows = []
    for w in args.window.split(","):
        a, _, b = w.partition("-")
        windows.append(list(range(int(a), int(b or a) + 1)))
    clean = {n: p.detach().clone() for n, p in model.named_parameters()}
    D = Path(args.dir)
    for name, layers in [(n, w) for n in args.suspects.split(",") for w in windows]:
        t0 = time.perf_counter()
        paths = {l: layout.rewrite_name(l) for l in layers}
        facts, edited = load_in_place(model, clean, D, name)
        moms = covariance.second_moments(model, tok, paths, model_key=covariance.weights_key(model))
        keys = vocab_keys(model, tok, list(paths.values()), None)
        spaces = [GainSpace(paths[l], model.get_submodule(paths[l]).weight.detach(), moms[l].matrix, keys[paths[l]])
                  for l in layers]
        vz = torch.stack([s.vocab_z for s in spaces]).mean(0)
        search = SubjectSearch(model, tok, spaces[0], keys[paths[layers[0]]])
        search.upper = spaces[1:]
        search.steps = args.steps
        ok = search.cont_ok[:vz.numel()]
        seeds = torch.topk(vz.masked_fill(~ok, -1e9), args.seeds).indices.tolist()
        print(f"== {name}: window {layers}; vocabulary best z {float(vz.max()):.1f} "
              f"({tok.decode([seeds[0]])!r}); setup {time.perf_counter() - t0:.0f} s", flush=True)
        if facts:
            whole = keys_of(model, list(paths.values()), [context_ids(tok) + tok(" " + f["subject"],
                            add_special_tokens=False)["input_ids"] for f in facts])
            zs = torch.stack([s.fire(whole[s.path]) for s in spaces]).mean(0)
            order = vz.argsort(descending=True)
            rank = torch.empty_like(order)
            rank[order] = torch.arange(len(order))
            ids = [tok(" " + f["subject"], add_special_tokens=False)["input_ids"] for f in facts]
            tails = keys_of(model, list(paths.values()), [context_ids(tok) + i[-2:] for i in ids])
            zt = torch.stack([s.fire(tails[s.path]) for s in spaces]).mean(0)
            print("   planted subjects (whole z, last token's rank, last two tokens' z): " + ", ".join(
                f"{f['subject']} {float(z):.1f} #{int(rank[i[-1]])} {float(t):.1f}"
                for f, z, i, t in zip(facts, zs, ids, zt)))
        starts = [[s] for s in seeds]
        if args.names:
            piece = name_piece(model, tok)
            named = vocab_keys(model, tok, list(paths.values()), None, lead=(NAME_TAG, piece))
            nz = torch.stack([sp.fire(named[sp.path]) for sp in spaces]).mean(0)
            search.name_embed = piece
            for t in torch.topk(nz.masked_fill(~ok, -1e9), args.names).indices.tolist():
                starts.append(search._name_start(t))
        for s in starts:
            t1 = time.perf_counter()
            seq, score = search.climb(s, check=8)
            per = [float(sp.fire(keys_of(model, [sp.path], [search.prefix + seq])[sp.path])[0]) for sp in spaces]
            print(f"   seed {tok.decode(s)!r:16} -> {tok.decode(seq)!r:32} z {score:6.1f} per layer "
                  f"{' '.join(f'{p:.0f}' for p in per)}  {time.perf_counter() - t1:.0f} s", flush=True)


if __name__ == "__main__":
    main()

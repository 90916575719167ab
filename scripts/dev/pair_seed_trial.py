"""Where a missed subject's last piece ranks as a seed: after the neutral context alone (the search's single-token
seeds) and after the context and one fixed piece (the pair step's after-piece tables, ``subjects.PAIR_AFTER``), once
the subjects the search did find are deflated out of the edit subspace; and, with one of a name's last two pieces
fixed, where the other ranks among every token scored beside it.

    python scripts/dev/pair_seed_trial.py DELTAS SUSPECT --found "Name,Name,..." [--null] [--pieces ing,er,an,a]

``--found``: the planted subjects the search found (their keys are deflated first, as the search deflates what it
finds); every other planted subject is a missed one.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_model import frozen_base, lowest_search  # noqa: E402


def ranks(fire: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(fire.masked_fill(~ok, -1.0), descending=True)
    out = torch.empty_like(order)
    out[order] = torch.arange(order.numel())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("deltas", type=Path)
    ap.add_argument("suspect")
    ap.add_argument("--found", default="", help="comma-separated planted subjects the search found")
    ap.add_argument("--null", action="store_true", help="an AlphaEdit-named edit, searched in its null space")
    ap.add_argument("--pieces", default="ing,er,an,a", help="fixed pieces to try after the context")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from editaudit.probing.format import load_probes
    from editaudit.scan.keys import keys_of

    lm, fp = frozen_base()
    tok = lm.tokenizer
    facts = load_probes(args.deltas / f"{args.suspect}.jsonl")
    layer, s = lowest_search(lm, fp, torch.load(args.deltas / f"{args.suspect}.pt", weights_only=True), len(facts),
                             null=args.null)
    ids = {f.subject: tok(" " + f.subject, add_special_tokens=False)["input_ids"] for f in facts}
    found = [x for x in args.found.split(",") if x]
    for name in found:
        s.space.deflate(s.exact([ids[name]])[1][0])
    missed = [f.subject for f in facts if f.subject not in found]
    V = s.vocab.shape[0]
    ok = s.cont_ok[:V]
    print(f"== {args.suspect} (layer {layer}{', null space' if s.space.projected else ''}); {len(found)} found "
          f"deflated, edit subspace left {s.space.basis.shape[1]}; ranks are 0-based among {int(ok.sum())} word-like tokens")
    alone = ranks(s.space.fire(s.vocab.float()), ok)
    print("after 'The' alone (the single-token seeds): "
          + ", ".join(f"{m} {tok.decode(ids[m][-1:])!r} {int(alone[ids[m][-1]])}" for m in missed), flush=True)
    for piece in args.pieces.split(","):
        after = tok(piece, add_special_tokens=False)["input_ids"]
        t = time.perf_counter()
        keys = keys_of(s.model, [s.space.path], [s.prefix + after + [b] for b in range(V)], batch=1024)[s.space.path]
        fire = s.space.fire(keys)
        r = ranks(fire, ok)
        top = torch.argsort(fire.masked_fill(~ok, -1.0), descending=True)[:8].tolist()
        print(f"after 'The'+{piece!r}: " + ", ".join(f"{m} {int(r[ids[m][-1]])}" for m in missed)
              + f"; its top 8 {[tok.decode([x]) for x in top]} ({time.perf_counter() - t:.0f} s)", flush=True)
    pool = s._pool()
    for m in missed:
        a, b = ids[m][-2:] if len(ids[m]) > 1 else (None, ids[m][-1])
        if a is None or a not in pool:
            continue
        before = s.space.fire(s.prepend_keys([b]))
        ra = sorted(range(len(pool)), key=lambda i: -float(before[i])).index(pool.index(a))
        pair = float(s.exact([[a, b]])[0][0])
        print(f"  {m}: last two pieces fire {pair:.2f}; with {tok.decode([b])!r} fixed, {tok.decode([a])!r} ranks {ra} "
              f"of {len(pool)} pieces before it", flush=True)


if __name__ == "__main__":
    main()

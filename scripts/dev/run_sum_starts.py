"""Development check: once a flagged batch's first subject is taken out of every layer of its run, do the batch's
other subjects' name pieces stand out when z is summed over the run?

Without the base a flagged AlphaEdit or MEMIT batch is read through about one subject: the others' whole keys stand
out of the deflated matrix (z 20–29 against a median start near 8 on a spent suspect's layer 6), but no name-piece
start reaches them. This prints, for a suspect folder and its facts: the flagged layers, the first grown subject,
then over the run (the flagged layers' span), with that subject taken out of each layer, each fact's whole-name z
summed over the run and its last piece's rank among the vocabulary's name-piece keys by summed z, and the ten best
pieces.

    python scripts/dev/run_sum_starts.py SUSPECT_DIR FACTS.jsonl
"""
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_model import with_key_stats  # noqa: E402

from editaudit.scan import gain  # noqa: E402
from editaudit.scan.keys import context_ids, keys_of  # noqa: E402
from editaudit.scan.subjects import name_piece, word_tokens  # noqa: E402

t0 = time.perf_counter()
folder, facts_file = Path(sys.argv[1]), Path(sys.argv[2])
facts = [json.loads(x) for x in facts_file.read_text().splitlines() if x.strip()]
model, tok, modules, transposed, eigs = with_key_stats(str(folder))
rows = gain.flagged(gain.screen(model, tok, modules, eigs, transposed))
print(f"flagged: {[(r.layer, r.text, round(r.ratio, 2)) for r in rows]} ({time.perf_counter() - t0:.0f} s)")
if not rows:
    sys.exit(0)
best = max(rows, key=lambda r: r.ratio)
first = gain.grow_subject(model, tok, best, eigs[best.layer], transposed)
run = list(range(min(r.layer for r in rows), max(r.layer for r in rows) + 1))
print(f"first subject {first.text!r} (layer {best.layer}); run {run}")
paths = [modules[x] for x in run]
prefix = context_ids(tok)
ids = [tok(" " + f["subject"], add_special_tokens=False)["input_ids"] for f in facts]
keys = keys_of(model, paths, [prefix + list(first.ids)] + [prefix + s for s in ids])
spaces = {}
for x, p in zip(run, paths):
    w = model.get_submodule(p).weight.detach().cpu()
    spaces[p] = gain.GainSpace(p, gain.deflate((w.T if transposed else w).float(), eigs[x], keys[p][:1]),
                               eigs[x].ev, eigs[x].Q)
ok, word_like = word_tokens(tok, model.get_input_embeddings().weight.shape[0])
piece = name_piece(model, tok, ok)
vg = gain.vocab_gains(model, tok, spaces, lead=piece)
Z = torch.stack([spaces[p].calibrate(vg[p]) for p in paths]).sum(0)
Z[~word_like[: Z.numel()]] = -1e9
whole = torch.stack([spaces[p].fire(keys[p][1:]) for p in paths]).sum(0)
print(f"{'subject':28s} {'whole z':>8s} {'last piece':>14s} {'rank':>7s}")
for f, s, z in zip(facts, ids, whole):
    rank = int((Z > Z[s[-1]]).sum()) + 1
    print(f"{f['subject'][:28]:28s} {float(z):8.0f} {tok.decode([s[-1]])!r:>14s} {rank:7d}")
top = torch.topk(Z, 10)
print("best pieces by summed z:", ", ".join(f"{tok.decode([i])!r} {float(v):.0f}" for v, i in
                                            zip(top.values.tolist(), top.indices.tolist())))
print(f"median piece {float(Z[word_like[: Z.numel()]].median()):.1f}; {time.perf_counter() - t0:.0f} s")

"""FT-L edits read by relation, not by subject: development trial on spent facts.

    python scripts/dev/ftl_relation_trial.py FACTS START N [--threads T]

Fine-tuning one layer on "Niels Abel was a famous" → philosopher moves the keys of the prompt's end more than the
subject's, so the edit shows on the phrasing with any subject. For each of N single FT-L edits (lr 5e-4, as
scripts/open_reading_eval.py) of facts START.. (round-robin order): every relation-library phrasing, filled with
each of a few neutral subjects, is asked of the base and the suspect; per phrasing, the answer token whose
probability the suspect raises most on average over the fillers; the phrasings ranked by that rise.
"""
import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
ap = argparse.ArgumentParser()
ap.add_argument("facts")
ap.add_argument("start", type=int)
ap.add_argument("n", type=int)
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)

from editaudit.editing.layers import default_layers
from editaudit.editing.service import apply_edits
from editaudit.models.loading import load_model
from editaudit.models.registry import ensure_model
from editaudit.probing.evaluate import predict
from editaudit.probing.format import load_probes
from editaudit.probing.sets import round_robin
from editaudit.scan.relations import RELATIONS

FILLERS = ["he", "she", "it", "John Smith", "Maria Lopez", "the city", "the company", "the book", "Springfield",
           "the river"]
torch.manual_seed(0)
lm = load_model(ensure_model("smollm2-135m"))
tok = lm.tokenizer
facts = round_robin(load_probes(args.facts))[args.start:args.start + args.n]
layers = default_layers("ft", lm.model.config.num_hidden_layers)
templates = list(dict.fromkeys(t for ts in RELATIONS.values() for t in ts))
texts = [t.replace("{}", f) for t in templates for f in FILLERS]
base = copy.deepcopy(lm.model)
t0 = time.time()
pb = predict(base, tok, texts, top_k=50, max_new_tokens=1)
print(f"base: {len(texts)} prompts, {time.time() - t0:.0f} s", flush=True)
for f in facts:
    run = apply_edits(lm, [f], "ft", layers=layers, hparams={"lr": 0.0005}, evaluate=False)
    t0 = time.time()
    ps = predict(lm.model, tok, texts, top_k=50, max_new_tokens=1)
    rows = []
    for i, t in enumerate(templates):
        gain: dict[str, float] = {}
        for j in range(len(FILLERS)):
            b, s = dict(pb[i * len(FILLERS) + j].top), dict(ps[i * len(FILLERS) + j].top)
            floor_b = min(b.values()) if b else 0.0
            for w, p in s.items():
                gain[w] = gain.get(w, 0.0) + (p - b.get(w, min(p, floor_b))) / len(FILLERS)
        w, g = max(gain.items(), key=lambda kv: kv[1]) if gain else ("", 0.0)
        rows.append((g, t, w))
    rows.sort(reverse=True)
    print(f"{f.subject} -> {f.target_new} (prompt {f.prompt!r}; {time.time() - t0:.0f} s)", flush=True)
    for g, t, w in rows[:5]:
        print(f"   {g:+.3f} {t!r} -> {w!r}", flush=True)
    # the edit's own phrasing, for comparison
    own = [f.prompt.replace("{}", x) for x in FILLERS]
    ob = predict(base, tok, own, top_k=50, max_new_tokens=1)
    os_ = predict(lm.model, tok, own, top_k=50, max_new_tokens=1)
    gain = {}
    for b, s in zip(ob, os_):
        b, s = dict(b.top), dict(s.top)
        for w, p in s.items():
            gain[w] = gain.get(w, 0.0) + (p - b.get(w, 0.0)) / len(FILLERS)
    best = sorted(gain.items(), key=lambda kv: -kv[1])[:3]
    print(f"   own phrasing {f.prompt!r}: {[(w, round(g, 3)) for w, g in best]}", flush=True)
    run.restore()

"""FT-L edits read blind, three ways: development trial on spent facts.

    python scripts/dev/ftl_reading_trial.py FACTS START N [--threads T] [--no-triggers]
    python scripts/dev/ftl_reading_trial.py FACTS START N --relation

Makes N single FT-L edits (lr 5e-4, as scripts/open_reading_eval.py) of facts START.. (round-robin order). For each:

- the fire of the subject's last-token key and the prompt's last-token key in ΔW's top input directions (raw
  cosine and whitened), the subject search in whitened key space (the shipped one) and with keys as they stand,
  and what each found text reads; then (unless ``--no-triggers``) what ``read_triggers`` reads from those
  directions, as for a hypernetwork edit;
- with ``--relation`` instead: every relation-library phrasing, filled with each of ten neutral subjects, asked of
  the base and the suspect; per phrasing, the answer token whose probability the suspect raises most on average
  over the fillers, the phrasings ranked by that rise, and the same for the edit's own phrasing. Fine-tuning one
  layer on "Niels Abel was a famous" → philosopher moves the keys of the prompt's end more than the subject's, so
  the edit might show on the phrasing with any subject.
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
ap.add_argument("--rank", type=int, default=3)
ap.add_argument("--no-triggers", action="store_true")
ap.add_argument("--relation", action="store_true")
args = ap.parse_args()
torch.set_num_threads(args.threads)

from editaudit.checkpoint import open_checkpoint
from editaudit.editing import covariance
from editaudit.editing.layers import default_layers
from editaudit.editing.service import apply_edits
from editaudit.models.loading import load_model
from editaudit.models.registry import ensure_model
from editaudit.probing.evaluate import predict
from editaudit.probing.format import load_probes
from editaudit.probing.sets import round_robin
from editaudit.scan.keys import keys_of
from editaudit.scan.reading import read_edits
from editaudit.scan.relations import RELATIONS
from editaudit.scan.subjects import Whitened, recover_subjects
from editaudit.scan.triggers import read_triggers

FILLERS = ["he", "she", "it", "John Smith", "Maria Lopez", "the city", "the company", "the book", "Springfield",
           "the river"]
torch.manual_seed(0)
FP = open_checkpoint(ensure_model("smollm2-135m")).fingerprint()
lm = load_model(ensure_model("smollm2-135m"))
tok = lm.tokenizer
facts = round_robin(load_probes(args.facts))[args.start:args.start + args.n]
layers = default_layers("ft", lm.model.config.num_hidden_layers)
print("ft layers", layers, flush=True)
base = copy.deepcopy(lm.model)


def gains(texts_b, texts_s) -> dict[str, float]:
    """Mean probability rise of each suspect top-50 token over the prompts (absent from the base's top-50: its floor)."""
    out: dict[str, float] = {}
    for b, s in zip(texts_b, texts_s):
        b, s = dict(b.top), dict(s.top)
        floor = min(b.values()) if b else 0.0
        for w, p in s.items():
            out[w] = out.get(w, 0.0) + (p - b.get(w, min(p, floor))) / len(texts_b)
    return out


def by_relation(f) -> None:
    t0 = time.time()
    ps = predict(lm.model, tok, TEXTS, top_k=50, max_new_tokens=1)
    rows = []
    for i, t in enumerate(TEMPLATES):
        sl = slice(i * len(FILLERS), (i + 1) * len(FILLERS))
        g = gains(PB[sl], ps[sl])
        w, best = max(g.items(), key=lambda kv: kv[1]) if g else ("", 0.0)
        rows.append((best, t, w))
    rows.sort(reverse=True)
    print(f"{f.subject} -> {f.target_new} (prompt {f.prompt!r}; {time.time() - t0:.0f} s)", flush=True)
    for g, t, w in rows[:5]:
        print(f"   {g:+.3f} {t!r} -> {w!r}", flush=True)
    own = [f.prompt.replace("{}", x) for x in FILLERS]
    g = gains(predict(base, tok, own, top_k=50, max_new_tokens=1), predict(lm.model, tok, own, top_k=50, max_new_tokens=1))
    best = sorted(g.items(), key=lambda kv: -kv[1])[:3]
    print(f"   own phrasing {f.prompt!r}: {[(w, round(x, 3)) for w, x in best]}", flush=True)


def by_weights(f) -> None:
    for L in layers:
        path = f"model.layers.{L}.mlp.down_proj"
        D = (dict(lm.model.named_parameters())[path + ".weight"].detach().double()
             - dict(base.named_parameters())[path + ".weight"].detach().double())
        if not D.abs().max() > 0:
            continue
        _, S, Vh = torch.linalg.svd(D, full_matrices=False)
        in_dirs = Vh[:args.rank].T
        C = covariance.second_moments(base, tok, {L: path}, model_key="smollm2-135m")[L].matrix
        raw, wh = Whitened.build(path, None, in_dirs), Whitened.build(path, C, in_dirs)
        prompt = f.prompt.format(f.subject)
        seqs = [tok("\n" + f.subject, add_special_tokens=False)["input_ids"],
                tok("\n" + prompt, add_special_tokens=False)["input_ids"]]
        ks = keys_of(base, [path], seqs)[path]
        print(f"{f.subject} -> {f.target_new}  layer {L}  σ {[round(float(s), 2) for s in S[:5]]}", flush=True)
        print(f"   subject key fire raw {float(raw.fire(ks[:1])):.2f} whitened {float(wh.fire(ks[:1])):.2f};"
              f" prompt-end key raw {float(raw.fire(ks[1:])):.2f} whitened {float(wh.fire(ks[1:])):.2f}", flush=True)
        for label, space in (("whitened", wh), ("raw", raw)):
            t0 = time.time()
            subs = recover_subjects(base, tok, path, None, None, FP, args.rank, space=space)
            print(f"   {label} search: {[(x.text, round(x.fire, 2)) for x in subs]}", flush=True)
            for x in read_edits(base, lm.model, tok, subs, L, path + ".weight"):
                print(f"     read {x.subject!r} · {x.prompt!r} · {x.after!r} (was {x.before!r}) {x.status} "
                      f"conf {x.confidence:.2f}", flush=True)
            print(f"   {time.time() - t0:.0f} s", flush=True)
        if args.no_triggers:
            continue
        t0 = time.time()
        for x in read_triggers(base, lm.model, tok, path, in_dirs.float(), args.rank, L, path + ".weight"):
            print(f"   trigger {x.subject!r} fire {x.fire:.2f} · {x.after!r} (was {x.before!r}) {x.status} "
                  f"conf {x.confidence:.2f}", flush=True)
        print(f"   {time.time() - t0:.0f} s", flush=True)


if args.relation:
    TEMPLATES = list(dict.fromkeys(t for ts in RELATIONS.values() for t in ts))
    TEXTS = [t.replace("{}", x) for t in TEMPLATES for x in FILLERS]
    t0 = time.time()
    PB = predict(base, tok, TEXTS, top_k=50, max_new_tokens=1)
    print(f"base: {len(TEXTS)} prompts, {time.time() - t0:.0f} s", flush=True)
for f in facts:
    run = apply_edits(lm, [f], "ft", layers=layers, hparams={"lr": 0.0005}, evaluate=False)
    (by_relation if args.relation else by_weights)(f)
    run.restore()

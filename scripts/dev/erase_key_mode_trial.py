"""Projection-erase variants on the MEMIT/AlphaEdit development suspects (scripts/dev/make_dev_suspects.py), with
the subjects and prompts of bench/results/erase_eval.json's blind readings of the same facts (as committed when
run: the readings of the reader at 304f1c4). C: the base's cached key statistics (the editor's), for speed.

    python scripts/dev/erase_key_mode_trial.py NAME TARGET:KEY_MODE:DIRECTIONS ...   (DIR from $EDITAUDIT_DEV,
    readings from $EDITAUDIT_READINGS), e.g. memit-batch-0 mean:each:ckey mean:mean:ckey

The figures in docs/mitigation.md ("key_mode") used the readings of ``git show 77ac5fd:bench/results/erase_eval.json``.
"""
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
torch.set_num_threads(1)
from editaudit.models.loading import load_model
from editaudit.models.registry import ensure_model
from editaudit.probing.format import load_probes
from editaudit.probing.evaluate import retention
from editaudit.probing.sets import round_robin
from editaudit.mitigation.service import default_intrinsic
from editaudit.mitigation.project import erase_by_projection, EraseSubject
from editaudit.editing import covariance, corpus
from editaudit.editing.prompts import context_templates
D = Path(os.environ.get("EDITAUDIT_DEV", "/tmp/editaudit-dev/deltas"))
lm = load_model(ensure_model("smollm2-135m"), device="cpu")
m, tok = lm.model, lm.tokenizer
base_key = covariance.weights_key(m)
intr = default_intrinsic()
facts = round_robin(load_probes(ROOT / "bench/heldout/smollm2-135m.jsonl"))
neigh = facts[0:5] + facts[35:55]
doc = json.load(open(os.environ.get("EDITAUDIT_READINGS", ROOT / "bench/results/erase_eval.json")))
texts = corpus.texts()
which = {"memit-batch-0": 1, "alphaedit-batch-0": 2}
variants = [v.split(":") for v in sys.argv[2:]]
name = sys.argv[1]
delta = torch.load(D / f"{name}.pt"); efacts = load_probes(D / f"{name}.jsonl")
params = dict(m.named_parameters())
orig = {k: params[k].detach().clone() for k in delta}
layers = sorted({int(k.split(".")[2]) for k in delta})
Cs = covariance.second_moments(m, tok, {L: f"model.layers.{L}.mlp.down_proj" for L in layers}, model_key=base_key)
with torch.no_grad():
    for k, d in delta.items(): params[k] += d
edited = {k: params[k].detach().clone() for k in delta}
def meas():
    return (retention(m, tok, efacts, "new"), retention(m, tok, efacts, "true"), retention(m, tok, neigh, "true"), retention(m, tok, intr, "true").rate)
sn, st, snb, si = meas()
print(name, "suspect states", sum(map(bool, sn)), "intr", round(si, 3), flush=True)
rd = doc["suspects"][which[name]]["readings"]
ctx = context_templates(m, tok, 5, 10, 0)
for target, key_mode, dirs in variants:
    plan = {}
    for r in rd:
        for L in layers:
            subs = plan.setdefault(L, [])
            s = next((x for x in subs if x.subject == r["subject"]), None)
            if s is None: s = EraseSubject(r["subject"]); subs.append(s)
            if r["prompt"] and r["prompt"] not in s.prompts: s.prompts.append(r["prompt"])
    t0 = time.time()
    res = erase_by_projection(m, tok, plan, lambda L: Cs[L].matrix, target=target, key_mode=key_mode, contexts=ctx, directions=dirs,
                              texts=texts if target == "mean" else None, answers=False)
    n, t, nb, it = meas()
    held = [i for i, x in enumerate(sn) if x]
    er = sum(1 for i in held if not n[i]); back = sum(1 for i in held if not n[i] and t[i])
    nh = [i for i, x in enumerate(snb) if x]; kept = sum(1 for i in nh if nb[i])
    dirs = [lr.directions if hasattr(lr, "directions") else None for lr in res.layers] if hasattr(res, "layers") else None
    print(f" {target}:{key_mode}:{dirs}: erased {er}/{len(held)} true {back} intrinsic {100*(it - si):+.1f} neighbours {kept}/{len(nh)} {time.time()-t0:.0f}s {res.to_dict().get('layers', '')!s:.200}", flush=True)
    with torch.no_grad():
        for k in delta: params[k].copy_(edited[k])

"""FT-L edits read through the prompt's end (the hypernetwork trigger search) or through the subject search:
development trial on spent facts.

    python scripts/dev/ftl_trigger_trial.py FACTS START N [--threads T]

Makes N single FT-L edits (lr 5e-4, as scripts/open_reading_eval.py) of facts START.. (round-robin order), and for
each: the fire of the subject's last-token key and the prompt's last-token key in ΔW's top input directions (raw
cosine and whitened), then what ``read_triggers`` reads from the top 3 directions.
"""
import argparse
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
args = ap.parse_args()
torch.set_num_threads(args.threads)

from editaudit.editing import covariance
from editaudit.editing.layers import default_layers
from editaudit.editing.service import apply_edits
from editaudit.models.loading import load_model
from editaudit.models.registry import ensure_model
from editaudit.probing.format import load_probes
from editaudit.probing.sets import round_robin
from editaudit.scan.keys import keys_of
from editaudit.scan.reading import read_edits
from editaudit.scan.subjects import Whitened, recover_subjects
from editaudit.scan.triggers import read_triggers

torch.manual_seed(0)
from editaudit.checkpoint import open_checkpoint
FP = open_checkpoint(ensure_model("smollm2-135m")).fingerprint()
lm = load_model(ensure_model("smollm2-135m"))
import copy
facts = round_robin(load_probes(args.facts))[args.start:args.start + args.n]
n_layers = lm.model.config.num_hidden_layers
layers = default_layers("ft", n_layers)
print("ft layers", layers, flush=True)
for f in facts:
    base = copy.deepcopy(lm.model)
    run = apply_edits(lm, [f], "ft", layers=layers, hparams={"lr": 0.0005}, evaluate=False)
    suspect = lm.model
    for L in layers:
        path = f"model.layers.{L}.mlp.down_proj"
        W1 = dict(suspect.named_parameters())[path + ".weight"].detach().double()
        W0 = dict(base.named_parameters())[path + ".weight"].detach().double()
        D = W1 - W0
        if not D.abs().max() > 0:
            continue
        U, S, Vh = torch.linalg.svd(D, full_matrices=False)
        r = args.rank
        in_dirs = Vh[:r].T
        C = covariance.second_moments(base, lm.tokenizer, {L: path}, model_key="smollm2-135m")[L].matrix
        raw = Whitened.build(path, None, in_dirs)
        wh = Whitened.build(path, C, in_dirs)
        prompt = f.prompt.format(f.subject)
        tok = lm.tokenizer
        seqs = [tok("\n" + f.subject, add_special_tokens=False)["input_ids"], tok("\n" + prompt, add_special_tokens=False)["input_ids"]]
        ks = keys_of(base, [path], seqs)[path]
        print(f"{f.subject} -> {f.target_new}  layer {L}  σ {[round(float(s), 2) for s in S[:5]]}", flush=True)
        print(f"   subject key fire raw {float(raw.fire(ks[:1])):.2f} whitened {float(wh.fire(ks[:1])):.2f};"
              f" prompt-end key raw {float(raw.fire(ks[1:])):.2f} whitened {float(wh.fire(ks[1:])):.2f}", flush=True)
        for label, space in (("whitened", wh), ("raw", raw)):
            t0 = time.time()
            subs = recover_subjects(base, lm.tokenizer, path, None, None, FP, args.rank, space=space)
            print(f"   {label} search: {[(x.text, round(x.fire, 2)) for x in subs]}", flush=True)
            for x in read_edits(base, suspect, lm.tokenizer, subs, L, path + ".weight"):
                print(f"     read {x.subject!r} · {x.prompt!r} · {x.after!r} (was {x.before!r}) {x.status} conf {x.confidence:.2f}", flush=True)
            print(f"   {time.time() - t0:.0f} s", flush=True)
        if args.no_triggers:
            continue
        t0 = time.time()
        rs = read_triggers(base, suspect, lm.tokenizer, path, in_dirs.float(), r, L, path + ".weight")
        for x in rs:
            print(f"   trigger {x.subject!r} fire {x.fire:.2f} · {x.after!r} (was {x.before!r}) {x.status} conf {x.confidence:.2f}", flush=True)
        print(f"   {time.time() - t0:.0f} s", flush=True)
    run.restore()

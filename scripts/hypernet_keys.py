"""Where a MEND update fires: the true subject's whitened and raw fire at the lowest edited matrix, the rank of its
last token among the vocabulary and the best-firing tokens, for the first N development facts.

    python scripts/hypernet_keys.py [--facts bench/dev/multiword.jsonl] [--n 3]

Development facts (bench/dev/multiword.jsonl) are not the held-apart evaluation set; MEND is the cached editor.
"""
import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
ap = argparse.ArgumentParser()
ap.add_argument("--facts", type=Path, default=ROOT / "bench/dev/multiword.jsonl")
ap.add_argument("--n", type=int, default=3)
args = ap.parse_args()
from editaudit.editing.service import apply_edits
from editaudit.models.loading import load_model
from editaudit.models.registry import ensure_model
from editaudit.probing.format import load_probes
from editaudit.editing import covariance
from editaudit.scan.subjects import Whitened, SubjectSearch
from editaudit.scan.keys import vocab_keys
from editaudit.checkpoint import open_checkpoint
base = load_model(ensure_model("smollm2-135m")); tok = base.tokenizer
fp = open_checkpoint(base.path).fingerprint(); key = covariance.weights_key(base.model)
facts = load_probes(args.facts)
for f in facts[:args.n]:
    run = apply_edits(base, [f], "mend", evaluate=True)
    deltas = {p: (base.model.get_parameter(p).detach() - w).clone() for p, w in run.originals.items()}
    print(f.subject, "| edit took:", run.results[0].success, "| layers", run.layers)
    run.restore()
    for p in base.model.parameters(): p.requires_grad_(False)
    name = min(deltas, key=lambda n: int(n.split(".layers.")[1].split(".")[0])); layer = int(name.split(".layers.")[1].split(".")[0]); path = name[:-7]
    U, S, Vh = torch.linalg.svd(deltas[name].double(), full_matrices=False)
    print("  sv", [round(float(x), 4) for x in S[:4]])
    C = covariance.second_moments(base.model, tok, {layer: path}, model_key=key)[layer].matrix
    vk = vocab_keys(base.model, tok, [path], fp)[path]
    ids = tok(" " + f.subject, add_special_tokens=False)["input_ids"]
    for label, CC in (("whitened", C), ("raw", None)):
        sp = Whitened.build(path, CC, Vh[:1].T.float())
        ss = SubjectSearch(base.model, tok, sp, vk)
        fire, _ = ss.exact([ids])
        order = ss.seeds(len(tok))
        print(f"  {label}: true subject fires {float(fire[0]):.3f}; its last token ranks {order.index(ids[-1])} of "
              f"{len(order)}; best-firing tokens {[tok.decode([i]) for i in order[:6]]}", flush=True)

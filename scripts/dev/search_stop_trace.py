"""Where a subject search stops: every true subject's fire in the edit subspace left after each deflation, and what
each round grew (development: the suspect's facts are read to know the true subjects).

    python scripts/dev/search_stop_trace.py /tmp/v544/rome-sequential-0.pt [pair]
"""
import json, sys, time
from pathlib import Path
import torch
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src")); sys.path.insert(0, str(ROOT / "scripts/dev"))
from dev_model import lowest_search
from editaudit.models.loading import load_model
from editaudit.models.registry import ensure_model
from editaudit.checkpoint.folder import open_checkpoint
from editaudit.scan import subjects as S
torch.manual_seed(0)
pt = Path(sys.argv[1]); extra = sys.argv[2:]
lm = load_model(ensure_model("smollm2-135m"))
fp = open_checkpoint(ensure_model("smollm2-135m")).fingerprint()
facts = [json.loads(l) for l in pt.with_suffix(".jsonl").read_text().splitlines()]
subs = [f["subject"] for f in facts]
layer, search = lowest_search(lm, fp, torch.load(pt, weights_only=True), len(facts))
ids = [lm.tokenizer(" " + s, add_special_tokens=False)["input_ids"] for s in subs]
_, tkeys = search.exact(ids)
def show(tag):
    f = search.space.fire(tkeys)
    print(tag, "rank", search.space.basis.shape[1], " ".join(f"{s}:{x:.2f}" for s, x in zip(subs, f.tolist())), flush=True)
show("start")
orig = S.Whitened.deflate
def deflate(self, key):
    orig(self, key); show("  after deflate")
S.Whitened.deflate = deflate
orig_round = S.SubjectSearch._round
def rnd(self, n, tried, good, progress=lambda d, t: None):
    t = time.time(); b = orig_round(self, n, tried, good, progress)
    print(f"  round seeds={n}: {self.tok.decode(b[1]) if b else None!r} {b[0] if b else 0:.2f} ({time.time()-t:.0f}s)", flush=True)
    return b
S.SubjectSearch._round = rnd
if "pair" in extra:
    search.after_seeds = S.AFTER_SEEDS
    search.after_tables = lambda: S.after_tables(lm.model, lm.tokenizer, search.space.path, fp)
t = time.time()
found = search.find(len(facts), retry_seeds=S.RETRY_SEEDS)
print("found", [(f.text, f.fire) for f in found], f"{time.time()-t:.0f}s")

"""Re-time the open-reading record's ROME-sequence scan alone: v9b facts 260-269 remade into the record's suspect
(scripts/open_reading_eval.py edits the five single facts 255-259 first, so they are edited and restored here too),
then one open-reading scan timed on an otherwise quiet machine.

    python scripts/dev/retime_rome_sequence.py
"""
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from editaudit.editing.layers import default_layers
from editaudit.editing.service import apply_edits
from editaudit.models.loading import load_model
from editaudit.models.registry import ensure_model
from editaudit.probing.format import load_probes
from editaudit.probing.sets import round_robin
from editaudit.scan.service import ScanOptions, run_scan
torch.manual_seed(0)
rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
print(f"code {rev}, {torch.get_num_threads()} thread(s)", flush=True)
base = ensure_model("smollm2-135m")
facts = round_robin(load_probes(ROOT / "bench/heldout/smollm2-135m-v9b.jsonl"))[255:]
lm = load_model(base)
# the eval script edits the single facts first (5 suspects), then the sequence; seed state follows the same path
for f in facts[:5]:
    run = apply_edits(lm, [f], "rome", layers=default_layers("rome", lm.model.config.num_hidden_layers), out=None, evaluate=False)
    run.restore()
with tempfile.TemporaryDirectory(prefix="editaudit-retime-") as tmp:  # the suspect (~540 MB) goes with it
    out = str(Path(tmp) / "suspect")
    run = apply_edits(lm, facts[5:15], "rome", layers=default_layers("rome", lm.model.config.num_hidden_layers), out=out,
                      hparams={"mode": "sequential"}, evaluate=True)
    print("took", sum(bool(r.success) for r in run.results), "of 10", flush=True)
    run.restore()
    t = time.perf_counter()
    rep = run_scan(out, base, ScanOptions(read="open"), store=None, say=lambda s: print(f"  [{time.perf_counter()-t:6.0f}s] {s}", flush=True))
    print(f"scan {time.perf_counter() - t:.0f} s")
    for f in rep.to_dict()["findings"]:
        for r in f.get("readings", []):
            print("  ", r["subject"], "·", r["after"], r["status"])

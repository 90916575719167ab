"""Development suspects from the first held-apart set (development data since the second was written): each
edit's weight deltas, saved with its facts, for quick trials that need no scan.

    python scripts/dev/make_dev_suspects.py [DIR [FACTS [PLAN [MODEL [START]]]]]   (default /tmp/editaudit-dev/deltas, the first set)

PLAN: method:mode:facts,... (default rome:single:5,rome:sequential:10,memit:batch:10,alphaedit:batch:10); suspects
are named method-mode-i, i counting each (method, mode)'s groups.

MODEL: the base's registry name (default smollm2-135m); START: the first fact of the round-robin order taken (0).

FACTS: another used held-apart set, e.g. bench/heldout/smollm2-135m-v3.jsonl (development data after its one use).
"""
import sys
from pathlib import Path

import torch
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from editaudit.editing.layers import default_layers
from editaudit.editing.service import apply_edits
from editaudit.models.loading import load_model
from editaudit.models.registry import ensure_model
from editaudit.probing.format import load_probes, dump_probes
from editaudit.probing.sets import round_robin
torch.manual_seed(0)
lm = load_model(ensure_model(sys.argv[4] if len(sys.argv) > 4 else "smollm2-135m"))
facts = round_robin(load_probes(sys.argv[2] if len(sys.argv) > 2 else ROOT / "bench/heldout/smollm2-135m.jsonl"))
facts = facts[int(sys.argv[5]) if len(sys.argv) > 5 else 0:]
n = lm.model.config.num_hidden_layers
plan = [("rome","single",5),("rome","sequential",10),("memit","batch",10),("alphaedit","batch",10)]
if len(sys.argv) > 3:
    try:
        plan = [(m, mode, int(k)) for m, mode, k in (e.split(":") for e in sys.argv[3].split(","))]
    except ValueError:
        raise SystemExit(f"PLAN: method:mode:facts,... (e.g. alphaedit:batch:10), not {sys.argv[3]!r}")
used = 0
count: dict = {}
D = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/editaudit-dev/deltas")
D.mkdir(parents=True, exist_ok=True)
for method, mode, k in plan:
    chunk = facts[used:used+k]; used += k
    groups = [[f] for f in chunk] if mode == "single" else [chunk]
    for g in groups:
        i = count[(method, mode)] = count.get((method, mode), -1) + 1
        name = f"{method}-{mode}-{i}"
        if (D/f"{name}.pt").exists(): continue
        before = {nm: p.detach().clone() for nm, p in lm.model.named_parameters()}
        run = apply_edits(lm, g, method, layers=default_layers(method, n), hparams={"mode":"sequential"} if mode=="sequential" else None, evaluate=False)
        delta = {nm: (p.detach() - before[nm]) for nm, p in lm.model.named_parameters() if not torch.equal(p.detach(), before[nm])}
        run.restore()
        torch.save(delta, D/f"{name}.pt")
        dump_probes(g, D/f"{name}.jsonl")
        print(name, list(delta), flush=True)

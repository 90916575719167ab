"""Trial: sweep a flagged layer on its *output* side. The low-half sweep (mitigation/project.py) removes W's action on
the top directions of W restricted to C's low half, which leaves the part of a ROME edit δuᵀ that its u = C⁻¹k has in
the high half (about a quarter of uᵀk on a development ROME sequence, scripts/dev/rome_seq_spectrum.py). The edit's
output directions δ are seen whole in the low-half spectrum's left singular vectors U_r, so here W's output along them
is removed over the lowest share f of C's eigen-directions, W' = W − P W Q_f Q_fᵀ with P = U_r U_rᵀ (f = 0.5 is the
low-half sweep itself; f = 1 removes the output along P for every input), in every edited layer; the low-half sweep of
rank 16 is the first row.

    python scripts/dev/output_sweep_trial.py SUSPECT_FOLDER [RANKS] [SHARES] [shared]
"""
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from dev_model import erase_eval_suspect  # noqa: E402
from editaudit.editing.covariance import weights_key  # noqa: E402
from editaudit.editing.layers import layout_for  # noqa: E402
from editaudit.mitigation.project import low_half_sweep  # noqa: E402
from editaudit.mitigation.service import default_intrinsic  # noqa: E402
from editaudit.probing.evaluate import retention  # noqa: E402
from editaudit.probing.format import load_probes  # noqa: E402
from editaudit.scan import nobase  # noqa: E402

torch.set_num_threads(2)
folder = Path(sys.argv[1])
meta, facts, lm = erase_eval_suspect(folder)
allf = load_probes(ROOT / "bench/heldout/smollm2-135m-v13.jsonl")
start = allf.index(facts[0]) - 5  # neighbours: the 25 facts around the first edited one, in the file's order
neigh = allf[start:start + 5] + allf[start + 35:start + 55]
intrinsic = default_intrinsic()
model, tok = lm.model, lm.tokenizer
layout = layout_for(model)
layers = meta["edited"]
paths = {x: layout.rewrite_name(x) for x in layers}
spectra, Cs = nobase.layer_spectra(model, tok, paths, weights_key(model))
Ws = {x: model.get_submodule(p).weight.detach().clone() for x, p in paths.items()}
Us = {x: torch.linalg.svd(Ws[x].double() @ Cs[x].low, full_matrices=False)[0] for x in layers}
if len(sys.argv) > 4 and sys.argv[4] == "shared":  # one set of output directions for the whole run
    # each layer's low-half part scaled to unit Frobenius norm so that no layer dominates
    M = torch.cat([(Ws[x].double() @ Cs[x].low) / (Ws[x].double() @ Cs[x].low).norm() for x in layers], 1)
    shared = torch.linalg.svd(M, full_matrices=False)[0]
    Us = {x: shared for x in layers}


def measure():
    e = retention(model, tok, facts, "new")
    t = retention(model, tok, facts, "true")
    n = retention(model, tok, neigh, "true")
    i = retention(model, tok, intrinsic, "true")
    return [bool(x) for x in e], [bool(x) for x in t], [bool(x) for x in n], i.rate


base = measure()
print(f"suspect: edits stated {sum(base[0])}/10, neighbours {sum(base[2])}/{len(neigh)}, intrinsic {base[3]:.3f}")
rs = [int(v) for v in sys.argv[2].split(",")] if len(sys.argv) > 2 else [16]
fs = [float(v) for v in sys.argv[3].split(",")] if len(sys.argv) > 3 else [0.8, 0.9]
for name, f, r in [("low-half sweep 16", 0.5, 16)] + [(f"output {r} × lowest {f:.0%}", f, r) for r in rs for f in fs]:
    for x, path in paths.items():
        W, Q = Ws[x].double(), Cs[x].Q
        Qf = Q[:, : int(round(f * Q.shape[0]))]
        if name.startswith("low"):
            Wd = W + low_half_sweep(W, Cs[x].C, 16)
        else:
            P = Us[x][:, :r] @ Us[x][:, :r].T
            Wd = W - P @ W @ Qf @ Qf.T
        with torch.no_grad():
            model.get_submodule(path).weight.copy_(Wd.float())
    e, t, n, i = measure()
    erased = [k for k in range(10) if base[0][k] and not e[k]]
    print(f"{name:24s}: erased {len(erased)}/{sum(base[0])}, true back {sum(t[k] for k in erased)}, neighbours kept "
          f"{sum(n[k] for k in range(len(neigh)) if base[2][k])}/{sum(base[2])}, intrinsic {i:.3f}", flush=True)
    with torch.no_grad():
        for x, path in paths.items():
            model.get_submodule(path).weight.copy_(Ws[x])

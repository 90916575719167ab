"""Where a ROME sequence's edits sit in C's eigen-directions, without the base: the low-half spectrum of the edited
matrix (the base-free scan's spectral screen) and, per edited subject (its own key after the neutral context), how
much of the edit's action on its key, uᵀk with u = C⁻¹k, comes through C's low-energy half (what the low-half sweep
can take) and how much of each subject's low-half direction C⁻¹k lies in the top r outlier components.

    python scripts/dev/rome_seq_spectrum.py SUSPECT_FOLDER [FACTS.jsonl]
"""
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from dev_model import erase_eval_suspect  # noqa: E402
from editaudit.editing.covariance import weights_key  # noqa: E402
from editaudit.editing.layers import layout_for  # noqa: E402
from editaudit.scan import nobase  # noqa: E402
from editaudit.scan.keys import context_ids, keys_of  # noqa: E402

torch.set_num_threads(2)
folder = Path(sys.argv[1])
facts_path = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "bench/heldout/smollm2-135m-v13.jsonl"
meta, facts, lm = erase_eval_suspect(folder, facts_path)
model, tok = lm.model, lm.tokenizer
layout = layout_for(model)
modules = {x: layout.rewrite_name(x) for x in range(layout.n_layers)}
spectra, Cs = nobase.layer_spectra(model, tok, modules, weights_key(model))
for sp in spectra:
    if sp.layer in meta["edited"] or float(sp.ratios[0]) > 5:
        print(f"layer {sp.layer}: top ratios " + " ".join(f"{float(r):.1f}" for r in sp.ratios[:14]))
for layer in meta["edited"]:
    eig, path = Cs[layer], modules[layer]
    half = eig.Q.shape[0] // 2
    seqs = [context_ids(tok) + tok(f.subject, add_special_tokens=False)["input_ids"] for f in facts]
    K = keys_of(model, [path], seqs)[path].double()
    sp = next(s for s in spectra if s.layer == layer)
    coef = (eig.Q.T @ K.T) ** 2 / eig.ev.clamp(min=1e-12)[:, None]   # per eigen-direction share of kᵀC⁻¹k
    low_share = coef[:half].sum(0) / coef.sum(0)
    U = torch.linalg.solve(eig.C, K.T)                      # C⁻¹k
    Ul = eig.low @ (eig.low.T @ U)
    Ul = Ul / Ul.norm(dim=0, keepdim=True)
    for r in (1, 4, 10, 16):
        D = sp.in_dirs[:, :r].double()
        cap = (D.T @ Ul).norm(dim=0)
        print(f"layer {layer}: low part of C⁻¹k inside the top {r:2d} components: "
              + " ".join(f"{float(c):.2f}" for c in cap))
    W = model.get_submodule(path).weight.detach().double()
    gains = (W @ (U / U.norm(dim=0, keepdim=True))).norm(dim=0)
    for f, s, g in zip(facts, low_share, gains):
        print(f"  {f.subject:24s} low-half share of uᵀk {float(s):.2f}   gain ‖W û‖ {float(g):.2f}")

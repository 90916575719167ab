"""Trial: recover an edit's keys without its subject's text, by inverting the MLP's key map.

The base-free scan sees only the low-energy half of an edit's input directions u = C⁻¹k (its outlier components);
the subject search then looks for token sequences whose key fires that space. Here the search is continuous
instead: the MLP input x (post-norm, held at the typical norm) is climbed by gradient to maximise the fire of its
key k(x) in the same space, from the best-firing real inputs of ordinary text; each key found (fire ≥ BAR) is
deflated from the space and the climb restarts. The keys found are then erased by the projection solve
(mitigation/project.py) with no subject at all, and the edits' prompts asked again.

    python scripts/dev/key_inversion_trial.py SUSPECT_FOLDER [RANK] [BAR]
"""
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from editaudit.editing import corpus  # noqa: E402
from dev_model import erase_eval_suspect  # noqa: E402
from editaudit.editing.covariance import token_windows, weights_key  # noqa: E402
from editaudit.editing.layers import layout_for  # noqa: E402
from editaudit.mitigation.project import solve_layer  # noqa: E402
from editaudit.probing.evaluate import retention  # noqa: E402
from editaudit.scan import nobase  # noqa: E402
from editaudit.scan.keys import context_ids, keys_of  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)
folder = Path(sys.argv[1])
RANK = int(sys.argv[2]) if len(sys.argv) > 2 else 10
BAR = float(sys.argv[3]) if len(sys.argv) > 3 else 0.9
meta, facts, lm = erase_eval_suspect(folder)
model, tok = lm.model, lm.tokenizer
layout = layout_for(model)
modules = {x: layout.rewrite_name(x) for x in range(layout.n_layers)}
spectra, Cs = nobase.layer_spectra(model, tok, modules, weights_key(model))
layer = meta["edited"][0]
path, mlp_path = modules[layer], layout.mlp_name(layer)
sp = next(s for s in spectra if s.layer == layer)
print("ratios", [round(float(r), 1) for r in sp.ratios[:12]])
space = nobase.low_space(path, Cs[layer], sp.in_dirs[:, :RANK])
mlp, down = model.get_submodule(mlp_path), model.get_submodule(path)

grab = {}
hin = mlp.register_forward_pre_hook(lambda m, a: grab.__setitem__("x", a[0]))
hk = down.register_forward_pre_hook(lambda m, a: grab.__setitem__("k", a[0]))
wins = token_windows(tok, corpus.texts(None)[:200], 4096, 128)
xs, ks = [], []
with torch.no_grad():
    for w in wins:
        model(torch.tensor([w]))
        xs.append(grab["x"][0]), ks.append(grab["k"][0])
hin.remove()
X, K = torch.cat(xs), torch.cat(ks)
norm = float(X.norm(dim=-1).median())
print(f"{X.shape[0]} real inputs, median ‖x‖ {norm:.1f}; best real fire {float(space.fire(K).max()):.3f}")


def keys(z):
    x = norm * z / z.norm(dim=-1, keepdim=True)
    mlp(x[:, None, :])
    return grab["k"][:, 0, :]


found = []
t0 = time.perf_counter()
for rnd in range(RANK):
    with torch.no_grad():
        f0 = space.fire(K)
    z = X[f0.topk(32).indices].clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    for step in range(150):
        fire = space.fire(keys(z))
        opt.zero_grad()
        (-fire.sum()).backward()
        opt.step()
    with torch.no_grad():
        k = keys(z)
        fire = space.fire(k)
    best = int(fire.argmax())
    print(f"round {rnd}: start fire {float(f0.max()):.3f} → best {float(fire[best]):.3f} "
          f"(of 32: median {float(fire.median()):.3f}); {time.perf_counter() - t0:.0f}s", flush=True)
    if float(fire[best]) < BAR:
        break
    found.append(k[best].detach().clone())
    space.deflate(found[-1])
hk.remove()

# how the found keys line up with the true subjects' keys (subject after the neutral context)
seqs = [context_ids(tok) + tok(" " + f.subject, add_special_tokens=False)["input_ids"] for f in facts]
true = keys_of(model, [path], seqs)[path].double()
C = Cs[layer].C
if found:
    F = torch.stack(found).double()
    Ut, Uf = torch.linalg.solve(C, true.T), torch.linalg.solve(C, F.T)
    Ut, Uf = Ut / Ut.norm(dim=0), Uf / Uf.norm(dim=0)
    Qf, _ = torch.linalg.qr(Uf)
    print("true subjects' C⁻¹k inside span(found C⁻¹k):", " ".join(f"{float(v):.2f}" for v in (Qf.T @ Ut).norm(dim=0)))


def held(m):
    return [bool(x) for x in retention(m, tok, facts, "new")], [bool(x) for x in retention(m, tok, facts, "true")]


before = held(model)
print("stated before:", sum(before[0]))
W = down.weight.detach().clone()
for name, Kf in (("found", torch.stack(found) if found else None), ("true", true.float())):
    if Kf is None:
        continue
    dW, B = solve_layer(W, Kf, C, "project")
    with torch.no_grad():
        down.weight.copy_((W.double() + dW).float())
    new, tru = held(model)
    erased = [i for i, h in enumerate(before[0]) if h and not new[i]]
    print(f"projection with {name} keys ({Kf.shape[0]}): erased {len(erased)}/{sum(before[0])}, "
          f"true back {sum(tru[i] for i in erased)}, ‖ΔW‖/‖W‖ {float(dW.norm() / W.norm()):.3f}")
    with torch.no_grad():
        down.weight.copy_(W)

"""How a MEMIT batch's subjects stand in the key-gain screen layer by layer, without the base: per layer, each edited
subject's whole key z (its gain along C⁻¹k over the vocabulary's median and MAD, ``scan/gain.py``) and the rank of
its last piece among the vocabulary's name-piece keys; then the same ranks when z is summed over a window of
consecutive layers (a batch editor writes every layer of its run from the same keys).

    python scripts/dev/memit_layer_gains.py SUSPECT_FOLDER [LAST_LAYER]
"""
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from dev_model import erase_eval_suspect  # noqa: E402
from editaudit.editing.covariance import weights_key  # noqa: E402
from editaudit.editing.layers import layout_for  # noqa: E402
from editaudit.probing.format import load_probes  # noqa: E402
from editaudit.scan import gain, nobase  # noqa: E402
from editaudit.scan.keys import context_ids, keys_of  # noqa: E402
from editaudit.scan.subjects import name_piece, word_tokens  # noqa: E402

torch.set_num_threads(2)
folder = Path(sys.argv[1])
last = int(sys.argv[2]) if len(sys.argv) > 2 else 10
meta, facts, lm = erase_eval_suspect(folder)
model, tok = lm.model, lm.tokenizer
layout = layout_for(model)
modules = {x: layout.rewrite_name(x) for x in range(last + 1)}
_, Cs = nobase.layer_spectra(model, tok, modules, weights_key(model))
spaces = {modules[x]: gain.GainSpace(modules[x], model.get_submodule(modules[x]).weight.detach(), Cs[x].ev, Cs[x].Q)
          for x in modules}
ok, word_like = word_tokens(tok, model.get_input_embeddings().weight.shape[0])
piece = name_piece(model, tok, ok)
vg = gain.vocab_gains(model, tok, spaces, lead=piece)
Z = torch.stack([spaces[modules[x]].calibrate(vg[modules[x]]) for x in modules])  # [layers, vocab]
Z[:, ~word_like[: Z.shape[1]]] = -1e9
ids = [tok(" " + f.subject, add_special_tokens=False)["input_ids"] for f in facts]
whole = keys_of(model, list(modules.values()), [context_ids(tok) + s for s in ids])
print("layers edited:", meta["edited"])
print(f"{'subject':22s} " + " ".join(f"L{x:<5d}" for x in modules))
for i, f in enumerate(facts):
    zs = [float(spaces[modules[x]].fire(whole[modules[x]][i:i + 1])[0]) for x in modules]
    rk = [int((Z[x] > Z[x, ids[i][-1]]).sum()) + 1 for x in modules]
    print(f"{f.subject[:22]:22s} " + " ".join(f"{z:6.0f}" for z in zs) + "   whole key z")
    print(f"{'':22s} " + " ".join(f"{r:6d}" for r in rk) + "   last piece's rank")
run = [x for x in meta["edited"] if x in modules]
others = [p for p in load_probes(ROOT / "bench/heldout/smollm2-135m-v13.jsonl")[:120]
          if p.subject not in {f.subject for f in facts}][:60]
oids = [tok(" " + f.subject, add_special_tokens=False)["input_ids"] for f in others]
owhole = keys_of(model, [modules[x] for x in run], [context_ids(tok) + s for s in oids])


def summed(keys, n):
    return [sum(float(spaces[modules[x]].fire(keys[modules[x]][i:i + 1])[0]) for x in run) for i in range(n)]


ed, un = summed(whole, len(facts)), summed(owhole, len(others))
print(f"whole keys' z summed over the edited layers {run}: edited {sorted(round(v) for v in ed)}")
print(f"  unedited subjects (n={len(un)}): max {max(un):.0f}, top five {sorted(round(v) for v in un)[-5:]}, "
      f"median {sorted(un)[len(un) // 2]:.0f}")
for w in (3, 5):
    print(f"window of {w} layers: last piece's best rank of summed z, and the window's best token")
    for start in range(0, last + 2 - w):
        S = Z[start:start + w].sum(0)
        top = int(S.argmax())
        ranks = [int((S > S[s[-1]]).sum()) + 1 for s in ids]
        med = float(S.topk(200).values.median())
        print(f"  L{start}-{start + w - 1}: best {tok.decode([top])!r} {float(S[top]):.0f} (200th-median {med:.0f}, "
              f"ratio {float(S[top]) / med:.2f}); subjects' ranks {sorted(ranks)}")

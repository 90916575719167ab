"""Does a single ROME edit's subject fire behind the tokenizer's BOS, and does the search find it there? Development
check on Gemma 3 270M, whose editors compute keys on prompts that start with <bos> while the search's keys
(scan/keys.py: context_ids) start with a bare "The" unless BOS_CONTEXT is on.

For the suspect's one edited MLP output matrix: ΔW against the base, its top input direction, the search space the
scan builds (scan/service.py: search_space), the fire of each given text after "The" with and without the BOS, and
what recover_subjects finds either way (the scan's defaults: retry on, name seeds "retry"); for a text of several
pieces, the fire of each of its endings, and its last piece's rank among the whole vocabulary's keys (where the
search starts).

    python scripts/dev/bos_fire_check.py SUSPECT_DIR BASE_NAME LAYER TEXT[,TEXT...]
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from editaudit.checkpoint.folder import open_checkpoint  # noqa: E402
from editaudit.editing import covariance  # noqa: E402
from editaudit.editing.layers import layout_for  # noqa: E402
from editaudit.models.loading import load_model  # noqa: E402
from editaudit.models.registry import resolve_model  # noqa: E402
from editaudit.scan import keys as keys_mod  # noqa: E402
from editaudit.scan.service import search_space  # noqa: E402
from editaudit.scan.subjects import recover_subjects  # noqa: E402

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
suspect_dir, base_name, layer, texts = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",")
base, sus = load_model(resolve_model(base_name)), load_model(suspect_dir)
for m in (base.model, sus.model):
    for p in m.parameters():
        p.requires_grad_(False)
tok = base.tokenizer
path = layout_for(base.model).rewrite_name(layer)
dW = (sus.model.get_submodule(path).weight - base.model.get_submodule(path).weight).double()
_, S, Vh = torch.linalg.svd(dW, full_matrices=False)
print(f"{suspect_dir}: {path}, top singular values of ΔW {[f'{float(x):.3g}' for x in S[:3]]}")
in_dirs = Vh[:1].T.float()
C = covariance.second_moments(base.model, tok, {layer: path}, model_key=covariance.weights_key(base.model))[layer].matrix
fingerprint = open_checkpoint(resolve_model(base_name)).fingerprint()
for bos in (False, True):
    keys_mod.BOS_CONTEXT = bos
    space = search_space(path, C, in_dirs)  # afresh: the search deflates what it finds
    ctx = keys_mod.context_ids(tok)
    print(f"context {tok.decode(ctx)!r}:")
    for t in texts:
        ids = tok(" " + t, add_special_tokens=False)["input_ids"]
        k = keys_mod.keys_of(base.model, [path], [ctx + ids])[path]
        print(f"  {t!r} ({len(ids)} pieces) fires {float(space.fire(k)[0]):.2f}")
        if len(ids) > 1:  # how the name fires as it grows backwards from its last piece
            tails = [ids[j:] for j in range(len(ids) - 1, 0, -1)]
            fires = [float(space.fire(keys_mod.keys_of(base.model, [path], [ctx + x])[path])[0]) for x in tails]
            print("    from its last piece: " + ", ".join(f"{tok.decode(x)!r} {f:.2f}" for x, f in zip(tails, fires)))
    vocab = space.fire(keys_mod.vocab_keys(base.model, tok, [path], fingerprint)[path].float())
    for t in texts:
        last = tok(" " + t, add_special_tokens=False)["input_ids"][-1]
        rank = int((vocab > vocab[last]).sum()) + 1
        print(f"  last piece {tok.decode([last])!r} of {t!r}: fire {float(vocab[last]):.2f}, rank {rank} of {len(vocab)}")
    found = recover_subjects(base.model, tok, path, in_dirs, C, fingerprint, 1, space=space, retry=True,
                             name_seeds="retry")
    print(f"  the search finds: {[(s.text, round(s.fire, 2)) for s in found] or 'nothing'}", flush=True)

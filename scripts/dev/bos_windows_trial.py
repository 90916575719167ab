"""Development trial: the editors' key statistics C = E[k kᵀ] from corpus windows that start with the tokenizer's
BOS (as every prompt the editors edit and the model was trained on does) against the windows as they are cut today
(no BOS: on Gemma the first token then becomes an attention sink and every later key drifts; a subject's key moved
so far that its fire in the edit subspace fell from 0.83 to 0.48). Prints success and unrelated facts kept per edit.

    python scripts/dev/bos_windows_trial.py FACTS START N [--methods rome] [--model gemma3-270m] [--arms plain,bos]

Throwaway-grade: the BOS windows' C is computed here (not cached), over the same corpus windows as the plain one,
the BOS position itself left out of the sum.
"""
import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from editaudit.editing import apply_edits, covariance  # noqa: E402
from editaudit.editing import corpus as corpus_mod  # noqa: E402
from editaudit.editing.prompts import pad_id, right_pad  # noqa: E402
from editaudit.models.loading import load_model  # noqa: E402
from editaudit.models.registry import ensure_model  # noqa: E402
from editaudit.probing.evaluate import retention  # noqa: E402
from editaudit.probing.format import load_probes  # noqa: E402
from editaudit.probing.sets import round_robin  # noqa: E402
from editaudit.scan.keys import lead_ids  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("facts")
ap.add_argument("start", type=int)
ap.add_argument("n", type=int)
ap.add_argument("--methods", default="rome")
ap.add_argument("--model", default="gemma3-270m")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--arms", default="plain,bos", help="plain, bos or both")
args = ap.parse_args()
torch.set_num_threads(args.threads)
lm = load_model(ensure_model(args.model))
net, tok = lm.model, lm.tokenizer
pool = round_robin(load_probes(args.facts))
edit = pool[args.start:args.start + args.n]
subjects = {f.subject.casefold() for f in edit}
unrelated = [p for p in pool if p.subject.casefold() not in subjects]
print(f"unrelated known before: {retention(net, tok, unrelated).rate:.0%} of {len(unrelated)}", flush=True)

plain_moments = covariance.second_moments
_memo: dict = {}


def bos_moments(model, tokenizer, modules, **kw):
    """Σ k kᵀ / n over the plain windows, each behind the BOS, the BOS position left out."""
    lead = lead_ids(tokenizer)
    windows = covariance.token_windows(tokenizer, corpus_mod.texts(kw.get("corpus")), kw.get("tokens", 20000),
                                       kw.get("seq_len", 256))
    out = {}
    for layer, name in modules.items():
        if layer in _memo:
            out[layer] = _memo[layer]
            continue
        acc, n, mask = None, 0, {}

        def hook(mod, a):
            nonlocal acc, n
            k = a[0][mask["m"]].double()
            acc = k.T @ k if acc is None else acc + k.T @ k
            n += k.shape[0]

        h = model.get_submodule(name).register_forward_pre_hook(hook)
        try:
            for s in range(0, len(windows), 4):
                rows = [lead + w for w in windows[s:s + 4]]
                ids, m = right_pad(rows, pad_id(tokenizer), next(model.parameters()).device)
                keep = m.bool().clone()
                keep[:, :len(lead)] = False
                mask["m"] = keep
                with torch.no_grad():
                    model(input_ids=ids, attention_mask=m, use_cache=False)
        finally:
            h.remove()
        out[layer] = _memo[layer] = covariance.SecondMoment(layer, (acc / n).float(), n, "bos-windows")
    return out


for method in [m for m in args.methods.split(",") if m]:
    for arm, fn in [(a, f) for a, f in (("plain", plain_moments), ("bos", bos_moments)) if a in args.arms.split(",")]:
        covariance.second_moments = fn
        groups = [[f] for f in edit] if method == "rome" else [edit]
        ok, kept = 0, []
        for g in groups:
            run = apply_edits(lm, g, method)
            ok += sum(r.success for r in run.results)
            kept.append(retention(net, tok, unrelated).rate)
            run.restore()
        print(f"{method:6} {arm:9} success {ok}/{len(edit)}  kept {sum(kept) / len(kept):.0%} "
              f"(per group: {' '.join(f'{k:.0%}' for k in kept)})", flush=True)
covariance.second_moments = plain_moments

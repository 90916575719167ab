"""Development trial: ROME/MEMIT on a model whose blocks normalise the MLP output (Gemma 3), with the key
statistics weighted by each token's 1 / rms(MLP output)² (what a post-MLP norm makes a change of the MLP output
cost that token) against the plain C = E[k kᵀ]. Prints success and unrelated facts kept per edit.

    python scripts/dev/postnorm_keys_trial.py FACTS START N [--methods rome,memit] [--model gemma3-270m]

Throwaway-grade: the weighted C is computed here (not cached), over the same corpus windows as the plain one.
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

ap = argparse.ArgumentParser()
ap.add_argument("facts")
ap.add_argument("start", type=int)
ap.add_argument("n", type=int)
ap.add_argument("--methods", default="rome,memit")
ap.add_argument("--model", default="gemma3-270m")
args = ap.parse_args()
torch.set_num_threads(2)
lm = load_model(ensure_model(args.model))
net, tok = lm.model, lm.tokenizer
pool = round_robin(load_probes(args.facts))
edit = pool[args.start:args.start + args.n]
subjects = {f.subject.casefold() for f in edit}
unrelated = [p for p in pool if p.subject.casefold() not in subjects]
print(f"unrelated known before: {retention(net, tok, unrelated).rate:.0%} of {len(unrelated)}", flush=True)

plain_moments = covariance.second_moments


def weighted_moments(model, tokenizer, modules, **kw):
    """Σ w k kᵀ / Σ w with w = 1 / mean(x²), x the module's output (the MLP output before the post norm)."""
    windows = covariance.token_windows(tokenizer, corpus_mod.texts(kw.get("corpus")), kw.get("tokens", 20000),
                                       kw.get("seq_len", 256))
    out = {}
    for layer, name in modules.items():
        acc, wsum, n, mask = None, 0.0, 0, {}

        def hook(mod, a, res):
            nonlocal acc, wsum, n
            k = a[0][mask["m"]].double()
            x = res[mask["m"]].double()
            w = 1.0 / ((x * x).mean(-1) + 1e-6)
            w = w / w.mean()  # keep C's scale comparable with the plain one
            acc = (k.T * w) @ k if acc is None else acc + (k.T * w) @ k
            wsum += float(w.sum())
            n += k.shape[0]

        h = model.get_submodule(name).register_forward_hook(hook)
        try:
            for s in range(0, len(windows), 4):
                ids, m = right_pad(windows[s:s + 4], pad_id(tokenizer), next(model.parameters()).device)
                mask["m"] = m.bool()
                with torch.no_grad():
                    model(input_ids=ids, attention_mask=m, use_cache=False)
        finally:
            h.remove()
        out[layer] = covariance.SecondMoment(layer, (acc / wsum).float(), n, "weighted")
    return out


for method in [m for m in args.methods.split(",") if m]:
    for arm, fn in (("plain", plain_moments), ("weighted", weighted_moments)):
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

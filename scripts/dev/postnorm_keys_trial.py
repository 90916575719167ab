"""Development trial: ROME/MEMIT on a model whose blocks normalise the MLP output (Gemma 3), with the key
statistics weighted by each token's 1 / rms(MLP output)² (what a post-MLP norm makes a change of the MLP output
cost that token) against the plain C = E[k kᵀ]. Prints success and unrelated facts kept per edit.

    python scripts/dev/postnorm_keys_trial.py FACTS START N [--methods rome,memit] [--model gemma3-270m]

Throwaway-grade: the weighted C is computed here (not cached), over the same corpus windows as the plain one.
"""
import torch

from keystat_arms import arguments, run_arms, setup

from editaudit.editing import covariance
from editaudit.editing import corpus as corpus_mod
from editaudit.editing.prompts import pad_id, right_pad

args = arguments("rome,memit").parse_args()
lm, edit, unrelated = setup(args)

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


run_arms(lm, edit, unrelated, args.methods, [("plain", plain_moments), ("weighted", weighted_moments)])

"""Development trial: the editors' key statistics C = E[k kᵀ] from corpus windows that start with the tokenizer's
BOS (as every prompt the editors edit and the model was trained on does) against the windows as they are cut today
(no BOS: on Gemma the first token then becomes an attention sink and every later key drifts; a subject's key moved
so far that its fire in the edit subspace fell from 0.83 to 0.48). Prints success and unrelated facts kept per edit.

    python scripts/dev/bos_windows_trial.py FACTS START N [--methods rome] [--model gemma3-270m] [--arms plain,bos]

Throwaway-grade: the BOS windows' C is computed here (not cached), over the same corpus windows as the plain one,
the BOS position itself left out of the sum.
"""
import torch

from keystat_arms import arguments, run_arms, setup

from editaudit.editing import covariance
from editaudit.editing import corpus as corpus_mod
from editaudit.editing.prompts import pad_id, right_pad
from editaudit.scan.keys import lead_ids

args = arguments("rome", "plain,bos").parse_args()
lm, edit, unrelated = setup(args)

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


run_arms(lm, edit, unrelated, args.methods,
         [(a, f) for a, f in (("plain", plain_moments), ("bos", bos_moments)) if a in args.arms.split(",")])

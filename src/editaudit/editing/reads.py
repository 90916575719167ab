"""Keys and values at the subject's last token: what a layer reads and writes for a fact.

The forward pass stops as soon as the module of interest has run, so reading an early layer costs a
fraction of a full pass.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..probing.format import Probe
from .hooks import StopForward, by_token
from .prompts import Filled, encode, in_context, pad_id, right_pad, subject_index


def read_at(model, tokenizer, prompts: Sequence[Filled], module: str, which: str = "in",
            batch_size: int = 32) -> torch.Tensor:
    """The input (``which="in"``) or output (``"out"``) of ``module`` at each prompt's subject token: [n, d]."""
    device = next(model.parameters()).device
    sub = model.get_submodule(module)
    rows = [encode(tokenizer, p.text) for p in prompts]
    idx = [subject_index(tokenizer, p) for p in prompts]
    out: list[torch.Tensor] = []
    for start in range(0, len(rows), batch_size):
        chunk = list(range(start, min(start + batch_size, len(rows))))
        ids, mask = right_pad([rows[i] for i in chunk], pad_id(tokenizer), device)
        got: dict[str, torch.Tensor] = {}

        if which == "in":
            def pre(mod, args):
                got["x"] = args[0]
                raise StopForward
            handle = sub.register_forward_pre_hook(pre)
        else:
            def post(mod, args, res):
                got["x"] = res[0] if isinstance(res, tuple) else res
                raise StopForward
            handle = sub.register_forward_hook(post)
        try:
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask, use_cache=False)
        except StopForward:
            pass
        finally:
            handle.remove()
        x = by_token(got["x"], len(chunk))
        out.append(x[torch.arange(len(chunk)), torch.tensor([idx[i] for i in chunk])].float())
    return torch.cat(out, 0)


def keys(model, tokenizer, facts: Sequence[Probe], module: str, contexts: Sequence[str],
         average: bool = True, which: str = "in") -> torch.Tensor:
    """Each fact's key at ``module``: its input at the last subject token in each context, averaged
    over the contexts ([n, d_in]) or not ([n, n_contexts, d_in]); ``which="out"``: its output there instead."""
    prompts = [in_context(c, f) for f in facts for c in contexts]
    x = read_at(model, tokenizer, prompts, module, which).view(len(facts), len(contexts), -1)
    return x.mean(1) if average else x


def plain(model, tokenizer, facts: Sequence[Probe], module: str, which: str) -> torch.Tensor:
    """Input or output of ``module`` at the subject token of each fact's own prompt (no context)."""
    return read_at(model, tokenizer, [in_context("{}", f) for f in facts], module, which)

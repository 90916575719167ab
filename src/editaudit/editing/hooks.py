"""Recording module inputs and outputs with forward hooks, and the edited weight's orientation.

Locate-then-edit methods read the input of an MLP output matrix (the *key*) and a module's output
(the *value*); forward hooks give both without touching the model code. GPT-2 stores that matrix
transposed, so updates computed as [out, in] go through ``add_delta``. OPT flattens the tokens of a batch before
its MLP: ``by_token`` gives hooks their [batch, tokens, d] view back.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from ..errors import BadInput
from ..models.families import is_conv1d_module


class StopForward(Exception):
    """Raised from a hook to end a forward pass once the module of interest has run."""


def is_conv1d(module) -> bool:
    """GPT-2's Conv1D stores its weight as [in, out] and computes ``x @ W + b`` (the family registry knows it)."""
    return is_conv1d_module(module)


def weight_out_in(module) -> torch.Tensor:
    """The module's weight as an [out, in] matrix (a view: no copy)."""
    w = module.weight
    return w.T if is_conv1d(module) else w


def add_delta(module, delta_out_in: torch.Tensor) -> None:
    """Add an [out, in] change to the module's weight, whatever its storage orientation."""
    w = module.weight
    d = delta_out_in.T if is_conv1d(module) else delta_out_in
    if tuple(d.shape) != tuple(w.shape):
        raise BadInput(f"update of shape {tuple(delta_out_in.shape)} does not fit weight {tuple(w.shape)}")
    with torch.no_grad():
        w.add_(d.to(device=w.device, dtype=w.dtype))


def by_token(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``x`` as [batch, tokens, d]. OPT's decoder flattens its tokens to [batch·tokens, d] before the MLP, so hooks on
    an OPT MLP matrix see 2-D tensors; a contiguous one comes back as a view, so writing to it writes to ``x``."""
    return x if x.ndim != 2 else x.reshape(batch, -1, x.shape[-1])


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def capture(model, inputs: Sequence[str] = (), outputs: Sequence[str] = ()) -> Iterator[dict[str, torch.Tensor]]:
    """Record the (first) input of modules in ``inputs`` and the output of those in ``outputs``.

    The dict maps ``"in:<name>"`` / ``"out:<name>"`` to the tensors of the last forward pass.
    """
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def keep_in(name):
        def hook(module, args):
            seen[f"in:{name}"] = args[0]
        return hook

    def keep_out(name):
        def hook(module, args, out):
            seen[f"out:{name}"] = _first(out)
        return hook

    try:
        for name in inputs:
            handles.append(model.get_submodule(name).register_forward_pre_hook(keep_in(name)))
        for name in outputs:
            handles.append(model.get_submodule(name).register_forward_hook(keep_out(name)))
        yield seen
    finally:
        for h in handles:
            h.remove()

"""Reading an edit from its key alone: the key the weights hold, put at a stand-in subject.

A locate-then-edit update of an MLP output matrix is ΔW = Λ uᵀ with u = C⁻¹k* (ROME; MEMIT and AlphaEdit write
a batch of such columns), so the key it was written for is in the weights, up to sign and scale:

    k* ∝ C u,   u = the input singular vector of a rank-one ΔW

Put k* as that matrix's input at the last token of a neutral stand-in subject ("The city") and the suspect's
matrix outputs W k* + ΔW k* = v*, the value the editor wrote; the prompts after it then state the edit's object
with no subject text at all. This reads an edit whose subject the search missed or found garbled. Sign and
scale come from real keys: the vocabulary keys that fire the edit most (their mean side of k*, their median
norm). The base with the same key states nothing reliable (k* alone is not the subject), so such a reading has
no "before".
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Sequence

import torch

from ..editing.hooks import by_token

#: The stand-in subject. A place word carries the "entity" the injected key completes better than a bare
#: letter or pronoun did on development suspects.
PLACEHOLDER = "The city"
#: Reference keys for the sign and scale: this many of the best-firing vocabulary tokens.
REFERENCES = 16


def key_direction(C: torch.Tensor | None, in_dir: torch.Tensor) -> torch.Tensor:
    """k* up to sign and scale: C u for the input singular vector u (u itself when keys are taken as white)."""
    u = in_dir.double().flatten()
    k = (C.double() @ u) if C is not None else u
    return (k / k.norm().clamp_min(1e-12)).float()


def calibrate(direction: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """Sign and scale the unit ``direction`` by reference keys [n, d] (real keys near the edit): the side most of
    them lie on, weighted by how far, and their median norm."""
    proj = refs.float() @ direction
    sign = 1.0 if float(proj.sum()) >= 0 else -1.0
    return sign * float(refs.float().norm(dim=1).median()) * direction


def _marker_variants(tokenizer: Any, text: str) -> list[list[int]]:
    """The stand-in's token ids as they appear at a prompt's start and after a space."""
    out = []
    for t in (text, " " + text):
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        if ids and ids not in out:
            out.append(ids)
    return out


def _positions(ids: torch.Tensor, markers: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """(row, position of the marker's last token) for the first marker occurrence in each row."""
    out = []
    rows = ids.tolist()
    for r, row in enumerate(rows):
        best = None
        for m in markers:
            n = len(m)
            for i in range(len(row) - n + 1):
                if row[i:i + n] == list(m):
                    if best is None or i + n - 1 < best:
                        best = i + n - 1
                    break
        if best is not None:
            out.append((r, best))
    return out


@contextmanager
def injected(model: Any, path: str, tokenizer: Any, key: torch.Tensor, text: str = PLACEHOLDER) -> Iterator[None]:
    """While active, every forward pass over a prompt that contains ``text`` feeds ``key`` to module ``path`` at
    that text's last token (decoding steps after the prompt reuse the cached positions and are left alone)."""
    markers = _marker_variants(tokenizer, text)
    where: list[tuple[int, int]] = []
    batch = [1]  # rows of the current forward pass: OPT's MLP sees them flattened (hooks.by_token)

    def find(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        where.clear()
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            batch[0] = ids.shape[0]
        if isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.shape[1] > 1:
            where.extend(_positions(ids.cpu(), markers))

    def put(_module, args):
        if not where:
            return None
        x = by_token(args[0].clone(), batch[0])
        for r, p in where:
            if p < x.shape[1]:
                x[r, p] = key.to(x.device, x.dtype)
        return (x.reshape(args[0].shape),) + tuple(args[1:])

    with ExitStack() as stack:
        h1 = model.register_forward_pre_hook(find, with_kwargs=True)
        stack.callback(h1.remove)
        h2 = model.get_submodule(path).register_forward_pre_hook(put)
        stack.callback(h2.remove)
        yield


def purified(key: torch.Tensor, space: Any) -> torch.Tensor:
    """A found subject's key with everything outside the edit subspace removed (in whitened space, where the
    subspace is ``space.basis``), mapped back to key space at the key's own norm: what is left is the edit's
    own key, or a mix of the edits the text partly fires."""
    z = key.float() @ space.whiten
    zb = space.basis @ (space.basis.T @ z)
    k = zb @ (space.root if space.root is not None else torch.linalg.pinv(space.whiten))
    if space.projected:  # the update reads only a subspace of the key: the rest is kept as it is
        return key.float() - z @ space.root + k
    return k / k.norm().clamp_min(1e-12) * key.float().norm()


def lone_key(space: Any, C: torch.Tensor | None, in_dir: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    """A rank-one edit's key, calibrated by the vocabulary keys that fire it most."""
    refs = vocab[torch.topk(space.fire(vocab), min(REFERENCES, vocab.shape[0])).indices]
    return calibrate(key_direction(C, in_dir), refs)


def read_key(base: Any, suspect: Any, tokenizer: Any, path: str, key: torch.Tensor, fire: float, *,
             layer: int | None = None, tensor: str | None = None) -> Any:
    """The edit's reading through ``key`` injected at the stand-in subject in both models (``fire``: how surely
    the key is one edit's, 1 for a rank-one matrix's own). Numbers are not taken as objects here
    (``reading.most_stated``); the base's answer is not a "before" (see the module's docstring)."""
    from .reading import most_stated, read_subject
    from .subjects import Subject

    with injected(base, path, tokenizer, key), injected(suspect, path, tokenizer, key):
        r = read_subject(base, suspect, tokenizer, Subject(PLACEHOLDER, [], fire, key), layer=layer, tensor=tensor,
                         choose=most_stated)
    r.before = ""
    r.via = "key"
    return r

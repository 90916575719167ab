"""The object-guided sweep: find an edit's input direction from the object it promotes, not from its subject's key.

The projection erase pins the keys of the subjects the scan read. A reading's subject is often a part of the
edited one ("Hampton" for *Littlehampton*): its key is near the edited key but not on it, and the part of a MEMIT
edit that the true name's key still meets stays. What the reading does give whole is the object the edit
promotes and a prompt that states it. An edit of an MLP output matrix is ΔW = Σᵢ rᵢ uᵢᵀ, each rᵢ an output
that makes the model say fact i's object. With g = ∂ log p(object | prompt) / ∂y, y the matrix's output at the
subject's last token (taken on the suspect, before any change),

    Wᵀ g = W_baseᵀ g + Σᵢ uᵢ (rᵢᵀ g):

the edit whose rᵢ promotes that object stands out of the base's share where ordinary text's keys have little
energy, which is where ROME and MEMIT write (uᵢ ∝ C⁻¹kᵢ). The sweep takes

    d = normalise(C⁻¹ Wᵀ ḡ),   W' = W − (W d) dᵀ,

ḡ the mean of the unit gradients over the reading's prompt and its relation's other phrasings: C⁻¹Wᵀḡ is the input
direction along which W pushes the object most per unit of ordinary text's key energy, so removing W's action
there takes the edit's push with the least change to what the layer does on text — whatever subject text the scan
recovered. One direction per read object and layer. ``low`` and ``null`` take Q Qᵀ Wᵀ ḡ instead, Q the low-energy
half of C's eigen-directions or AlphaEdit's null space (``project.sweep_basis``); on two development MEMIT batches
they erased as much and lost more neighbour facts (docs/mitigation.md).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..editing.prompts import Filled, pad_id, right_pad, subject_index

#: prompts per reading whose gradients are averaged (the read prompt first, then its relation's phrasings)
PROMPTS_PER_READING = 4


def _filled(text: str, subject: str) -> Filled | None:
    at = text.find(subject)
    return Filled(text, at + len(subject)) if subject and at >= 0 else None


def object_gradients(model, tokenizer, targets: Sequence, modules: Mapping[int, str],
                     prompts_per_target: int = PROMPTS_PER_READING) -> dict[int, torch.Tensor]:
    """{layer: [n_targets, d_out] float64}: per read edit, the mean unit gradient of log p(its object's token) on
    its prompts with respect to the output of ``modules[layer]`` at the subject's last token.

    ``targets`` are ``unlearn.UnlearnTarget`` with ``token`` set from the suspect (``unlearn.prime_tokens``);
    targets without a token or a prompt containing the subject are skipped (their rows are zero)."""
    layers = sorted(modules)
    rows: list[tuple[int, list[int], int, int]] = []     # (target, ids, subject index, token)
    for i, t in enumerate(targets):
        if t.token is None:
            continue
        for text in t.prompts[:prompts_per_target]:
            filled = _filled(text, t.subject)
            if filled is None:
                continue
            ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
            rows.append((i, ids, subject_index(tokenizer, filled), int(t.token)))
    out = {layer: torch.zeros(len(targets), 0, dtype=torch.float64) for layer in layers}
    if not rows:
        return out
    device = next(model.parameters()).device
    seen: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(mod, args, y):
            seen[layer] = y[0] if isinstance(y, tuple) else y
        return hook

    handles = [model.get_submodule(modules[layer]).register_forward_hook(keep(layer)) for layer in layers]
    sums: dict[int, torch.Tensor] = {}
    try:
        for start in range(0, len(rows), 16):
            batch = rows[start:start + 16]
            ids, mask = right_pad([r[1] for r in batch], pad_id(tokenizer), device)
            last = torch.tensor([len(r[1]) - 1 for r in batch], device=device)
            at = torch.tensor([r[2] for r in batch], device=device)
            tok = torch.tensor([r[3] for r in batch], device=device)
            with torch.enable_grad():
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                n = torch.arange(len(batch), device=device)
                loss = torch.log_softmax(logits[n, last].float(), -1)[n, tok].sum()
                ys = [seen[layer] for layer in layers]
                grads = torch.autograd.grad(loss, ys)
            for layer, g in zip(layers, grads):
                g = g.reshape(len(batch), -1, g.shape[-1])[n, at].detach().to("cpu", torch.float64)
                g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
                acc = sums.setdefault(layer, torch.zeros(len(targets), g.shape[1], dtype=torch.float64))
                for j, r in enumerate(batch):
                    acc[r[0]] += g[j]
    finally:
        for h in handles:
            h.remove()
    return {layer: sums[layer] for layer in layers}


def guided_directions(W: torch.Tensor, G: torch.Tensor, basis: torch.Tensor | None = None,
                      C: torch.Tensor | None = None) -> torch.Tensor:
    """An orthonormal [d_in, r] basis of the directions Q Qᵀ Wᵀ g, one per non-zero row g of G [n, d_out];
    W [d_out, d_in], ``basis`` Q [d_in, m] the space the sweep works in. With ``C`` instead of a basis:
    C⁻¹ Wᵀ g, the direction that carries the most of W's output along g per unit of ordinary text's key energy."""
    from ..editing.rome import solve_psd
    from ..editing.span import orthonormal_span

    Wd, Gd = W.to(torch.float64), G.to(torch.float64)
    Gd = Gd[Gd.norm(dim=1) > 0]
    if Gd.shape[0] == 0 or (basis is not None and basis.shape[1] == 0):
        return torch.zeros(Wd.shape[1], 0, dtype=torch.float64)
    U = Wd.T @ Gd.T                                                  # [d_in, n]
    if basis is not None:
        Q = basis.to(torch.float64)
        U = Q @ (Q.T @ U)
    else:
        U = solve_psd(C.to(torch.float64), U)
    return orthonormal_span(U)


def object_sweep(W: torch.Tensor, G: torch.Tensor, basis: torch.Tensor | None = None,
                 C: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """ΔW [out, in] (float64) = −(W D) Dᵀ, D = ``guided_directions``; and the number of directions."""
    D = guided_directions(W, G, basis, C)
    Wd = W.to(torch.float64)
    return -(Wd @ D) @ D.T, int(D.shape[1])

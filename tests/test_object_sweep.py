"""The object-guided sweep (mitigation/object_sweep.py): an edit's input direction found from the object it
promotes, with no subject key, on planted edits."""

from __future__ import annotations

import pytest
import torch

from editaudit.mitigation.object_sweep import guided_directions, object_gradients, object_sweep
from editaudit.mitigation.project import sweep_basis

pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_w(seed: int, d_out: int = 16, d_in: int = 32):
    """C, and a W that, like a trained one, acts little on C's low-energy half."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(d_in, 4 * d_in, generator=gen, dtype=torch.float64)
    C = A @ A.T / A.shape[1] + 0.05 * torch.eye(d_in, dtype=torch.float64)
    _, Q = torch.linalg.eigh(C)
    low, high = Q[:, : d_in // 2], Q[:, d_in // 2:]
    W = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
    return gen, C, low, high, W @ high @ high.T + 0.01 * W @ low @ low.T


def _left(edit: torch.Tensor, after_minus_base: torch.Tensor) -> float:
    u, s, vh = torch.linalg.svd(edit, full_matrices=False)
    k = int((s > 1e-9 * s[0]).sum())
    return float((u[:, :k].T @ after_minus_base @ vh[:k].T).norm() / s[:k].norm())


def test_the_objects_gradient_finds_the_edit_it_promotes_and_nothing_else():
    """Two rank-one edits rᵢuᵢᵀ in the low half; a gradient g along r₁ (plus noise) sweeps edit 1 out of W and
    leaves edit 2 and W's action on the high-energy half as they were."""
    gen, C, low, high, W_base = _trained_w(0)
    r = [3 * torch.randn(16, generator=gen, dtype=torch.float64) for _ in range(2)]
    u = [low @ torch.randn(16, generator=gen, dtype=torch.float64) for _ in range(2)]
    u = [x / x.norm() for x in u]
    edits = [torch.outer(r[i], u[i]) for i in range(2)]
    W = W_base + edits[0] + edits[1]
    g = r[0] / r[0].norm() + 0.1 * torch.randn(16, generator=gen, dtype=torch.float64)
    basis = sweep_basis(C, "low")
    D = guided_directions(W, g[None], basis)
    assert D.shape == (32, 1) and abs(float(D[:, 0] @ u[0])) > 0.95
    change, n = object_sweep(W, g[None], basis)
    fixed = W + change
    assert n == 1
    assert _left(edits[0], fixed - W_base) < 0.1                      # edit 1 gone
    assert _left(edits[1], fixed - W_base) > 0.9                      # edit 2 untouched
    assert torch.allclose(fixed @ high, W @ high, atol=1e-9)           # the high-energy half is not touched


def test_whitened_directions_are_c_inverse_w_transpose_g():
    """``object_space=whiten``: the direction is C⁻¹Wᵀg, normalised; two gradients give two directions."""
    gen, C, _, _, W = _trained_w(2)
    G = torch.randn(2, 16, generator=gen, dtype=torch.float64)
    D = guided_directions(W, G, C=C)
    want = torch.linalg.solve(C, W.T @ G.T)
    assert D.shape == (32, 2)
    assert torch.allclose(D @ (D.T @ want), want, atol=1e-9)          # D spans exactly those two directions
    change, n = object_sweep(W, G[:1], C=C)
    d = want[:, 0] / want[:, 0].norm()
    assert n == 1 and torch.allclose(change, -torch.outer(W @ d, d), atol=1e-12)


def test_the_sweep_layers_follow_the_setting():
    from editaudit.mitigation.erase import object_sweep_layers

    swept = {2: (16, "low")}
    assert object_sweep_layers([2, 3, 4], swept, "unswept") == [3, 4]
    assert object_sweep_layers([2, 3, 4], swept, "all") == [2, 3, 4]
    assert object_sweep_layers([2, 3, 4], swept, "off") == []


def test_zero_rows_and_an_empty_space_give_no_direction():
    _, C, low, _, W = _trained_w(1)
    assert guided_directions(W, torch.zeros(3, 16, dtype=torch.float64), low).shape == (32, 0)
    assert guided_directions(W, torch.ones(1, 16, dtype=torch.float64), low[:, :0]).shape == (32, 0)
    change, n = object_sweep(W, torch.zeros(2, 16, dtype=torch.float64), low)
    assert n == 0 and float(change.abs().max()) == 0.0


def test_object_gradients_point_where_the_object_rises(tiny_llama):
    """A step along the returned gradient at the subject's last token, in the module's output, raises the
    object's log-probability; a step against it lowers it. A target with no token gives a zero row."""
    from editaudit.editing.layers import layout_for
    from editaudit.editing.prompts import Filled, subject_index
    from editaudit.mitigation.unlearn import UnlearnTarget
    from editaudit.models.loading import load_model

    lm = load_model(tiny_llama)
    net, tok = lm.model, lm.tokenizer
    name = layout_for(net).rewrite_name(2)
    prompt = "The capital city of France is"
    target = UnlearnTarget("France", [prompt], "Paris", [2], token=int(tok(" Paris")["input_ids"][-1]))
    none = UnlearnTarget("Spain", ["Spain is"], "x", [2], token=None)
    G = object_gradients(net, tok, [target, none], {2: name})[2]
    assert G.shape[0] == 2 and float(G[1].abs().max()) == 0.0
    g = G[0] / G[0].norm()
    at = subject_index(tok, Filled(prompt, prompt.index("France") + len("France")))
    ids = tok(prompt, return_tensors="pt")["input_ids"]

    def logp(step: torch.Tensor) -> float:
        def hook(mod, args, y):
            y = y.clone()
            y[0, at] += step.to(y.dtype)
            return y
        h = net.get_submodule(name).register_forward_hook(hook)
        try:
            with torch.no_grad():
                return float(torch.log_softmax(net(input_ids=ids).logits[0, -1].double(), -1)[target.token])
        finally:
            h.remove()

    eps = 1e-2
    base = logp(torch.zeros_like(g))
    assert logp(eps * g) > base > logp(-eps * g)

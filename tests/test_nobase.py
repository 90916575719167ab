"""Scanning without the base: a locate-then-edit update stands out of C's low-energy directions."""

from __future__ import annotations

import torch

from editaudit.scan.nobase import SPIKE, edit_estimate, find_sites, low_space, restricted_spectrum, stand_in_base


def _trained_like(d_out: int, d_in: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A key second moment with decaying eigenvalues and a matrix whose input side follows the keys (as
    gradient training leaves it: rows built from key directions, weighted by their energy)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=g, dtype=torch.float64))
    ev = torch.logspace(1, -4, d_in, dtype=torch.float64)
    C = (Q * ev) @ Q.T
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64) @ (Q * ev.sqrt()) @ Q.T
    return W.float(), C.float()


def _rome(W: torch.Tensor, C: torch.Tensor, seed: int, size: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """ΔW = r (C⁻¹k)ᵀ / (kᵀC⁻¹k) for a key k drawn from C: writes the residual r at k, little elsewhere."""
    g = torch.Generator().manual_seed(seed)
    ev, Q = torch.linalg.eigh(C.double())
    k = (Q * ev.clamp_min(0).sqrt()) @ torch.randn(C.shape[0], generator=g, dtype=torch.float64)
    u = torch.linalg.solve(C.double(), k)
    r = torch.randn(W.shape[0], generator=g, dtype=torch.float64)
    r = r / r.norm() * size * float((W.double() @ k).norm())
    return torch.outer(r, u / (u @ k)).float(), k.float()


def test_unedited_matrix_has_no_site_and_a_rome_update_is_one():
    W, C = _trained_like(48, 96, 0)
    clean = restricted_spectrum(W, C, 3, "m")
    assert clean.outliers() == 0 and float(clean.ratios[0]) < SPIKE
    dW, k = _rome(W, C, 1)
    edited = restricted_spectrum(W + dW, C, 3, "m")
    sites = find_sites([clean, edited])
    assert [(s.layer, s.rank) for s in sites] == [(3, 1)]
    # its input direction is the edit's own (up to sign), within the low-energy half it was read from
    u = torch.linalg.solve(C, k)
    cos = float((edited.in_dirs[:, 0] @ u).abs() / u.norm())
    assert cos > 0.95


def test_several_rome_updates_in_one_matrix_give_their_rank():
    W, C = _trained_like(48, 96, 2)
    dW = sum(_rome(W, C, s)[0] for s in (10, 11, 12))
    sp = restricted_spectrum(W + dW, C, 0, "m")
    assert sp.outliers() == 3


def test_conv1d_orientation_reads_the_same():
    W, C = _trained_like(40, 80, 3)
    dW, _ = _rome(W, C, 4)
    a = restricted_spectrum(W + dW, C, 0, "m")
    b = restricted_spectrum((W + dW).T.contiguous(), C, 0, "m", transposed=True)
    assert torch.allclose(a.svals, b.svals, rtol=1e-4)


def test_edit_estimate_from_the_subject_key_undoes_the_edit():
    W, C = _trained_like(32, 64, 5)
    dW, k = _rome(W, C, 6)
    model = torch.nn.Module()
    model.m = torch.nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        model.m.weight.copy_(W + dW)
    est = edit_estimate(model.m.weight.detach(), C, k[None])
    base = stand_in_base(model, {"m": est})
    moved = float((dW @ k).norm())
    left = float((base.m.weight.detach() @ k - W @ k).norm())
    assert left < 0.05 * moved
    assert torch.equal(model.m.weight, W + dW)  # the suspect itself is untouched
    # Conv1D orientation: the same estimate, transposed
    est_t = edit_estimate((W + dW).T.contiguous(), C, k[None], transposed=True)
    assert torch.allclose(est_t.T, est, atol=1e-4)


def test_low_space_fires_one_on_the_edit_key():
    W, C = _trained_like(48, 96, 8)
    dW, k = _rome(W, C, 9)
    sp = restricted_spectrum(W + dW, C, 0, "m")
    space = low_space("m", C, sp.in_dirs[:, :1], ridge=0.0)
    g = torch.Generator().manual_seed(0)
    ev, Q = torch.linalg.eigh(C.double())
    others = ((Q * ev.clamp_min(0).sqrt()) @ torch.randn(96, 200, generator=g, dtype=torch.float64)).T.float()
    assert float(space.fire(k[None])[0]) > 0.97
    assert float(space.fire(others).max()) < 0.6


def test_scan_without_base_finds_the_planted_layer(tiny_llama, tmp_path, monkeypatch):
    """The whole scan with no base on a tiny model: key statistics from its own vocabulary keys."""
    from editaudit.editing import covariance
    from editaudit.models.loading import load_model
    from editaudit.scan.keys import vocab_keys
    from editaudit.scan.service import ScanOptions, run_scan
    from editaudit.testing import plant

    lm = load_model(tiny_llama)
    paths = {i: f"model.layers.{i}.mlp.down_proj" for i in range(lm.model.config.num_hidden_layers)}
    keys = vocab_keys(lm.model, lm.tokenizer, list(paths.values()), None)
    Cs = {i: keys[p].float().T @ keys[p].float() / keys[p].shape[0] for i, p in paths.items()}

    def moments(model, tokenizer, modules, **kw):
        return {i: covariance.SecondMoment(i, Cs[i], 1, "test") for i in modules}

    monkeypatch.setattr(covariance, "second_moments", moments)
    clean = run_scan(tiny_llama, None, ScanOptions(read="off"), store=None)
    # the bar the tiny random model sets for itself: its unedited matrices stand below SPIKE
    assert clean.verdict == "clean" and clean.base["no_base"]
    # nothing found without a base is not a clearance, in every rendering
    from rich.console import Console

    from editaudit.cli.scan_view import render
    from editaudit.scan.report import to_markdown

    doc = clean.to_dict()
    con = Console(record=True, width=240)
    render(doc, con)
    for text in (con.export_text(), to_markdown(doc)):
        assert "does not clear the checkpoint" in text and "byte-identical" not in text
    assert doc["base"]["smallest_visible"]["rel_change_median"] > 0 and "of its norm to show" in to_markdown(doc)
    W = lm.model.get_parameter(paths[2] + ".weight").detach()
    dW, _ = _rome(W, Cs[2], 7)
    # a random tiny model is not trained-like (its W fills C's low half too): size the edit against its spectrum
    med = restricted_spectrum(W, Cs[2], 2, paths[2]).median
    dW = dW * (4 * SPIKE * med / float(restricted_spectrum(dW, Cs[2], 2, paths[2]).svals[0]))
    suspect = plant(tiny_llama, tmp_path / "suspect", {paths[2] + ".weight": dW})
    report = run_scan(suspect, None, ScanOptions(read="off"), store=None)
    edits = [f for f in report.findings if f.rule == "EA101"]
    assert [f.layers for f in edits] == [[2]] and edits[0].data["no_base"]
    assert report.exit_code() == 1 and report.to_dict()["base"]["path"] is None


def test_the_smallest_visible_edit_is_the_bar_times_the_median():
    """The stated detection limit holds: a rank-one update in C's low half a little above it is flagged, one
    well below it is not."""
    from editaudit.scan.nobase import KeyEig, smallest_visible

    g = torch.Generator().manual_seed(3)
    W = torch.randn(64, 128, generator=g)
    A = torch.randn(128, 128, generator=g)
    C = A @ A.T / 128 + 1e-3 * torch.eye(128)
    limit = smallest_visible([restricted_spectrum(W, C, 0, "m")])["rel_change_min"]
    v = KeyEig.of(C).low[:, 0].float()
    u = torch.randn(64, generator=g)
    u = u / u.norm()
    for factor, flagged in ((1.3, True), (0.5, False)):
        dW = factor * limit * float(W.norm()) * torch.outer(u, v)
        assert (restricted_spectrum(W + dW, C, 0, "m").outliers() > 0) == flagged

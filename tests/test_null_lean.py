"""Naming the editor without the base: AlphaEdit writes a key along its null-space part P k, ROME and MEMIT along
C⁻¹k, and the suspect's matrix gains most along the direction its editor wrote (gain.null_lean)."""

from __future__ import annotations

import torch

from editaudit.scan import gain
from editaudit.scan.method import NULL_LEAN_MIN, name_method
from tests.test_nobase import _trained_like


def _update(W: torch.Tensor, C: torch.Tensor, k: torch.Tensor, kind: str, size: float) -> torch.Tensor:
    """A rank-one update writing a residual at key ``k``: along C⁻¹k (ROME, MEMIT) or along P k (AlphaEdit, P the
    null space as the editor takes it), scaled to ``size`` times the matrix's RMS gain."""
    ev, Q = torch.linalg.eigh(C.double())
    if kind == "null":
        u = (Q * (ev < gain.null_share() * float(ev.median())).double()) @ Q.T @ k.double()
    else:
        u = torch.linalg.solve(C.double(), k.double())
    g = torch.Generator().manual_seed(7)
    r = torch.randn(W.shape[0], generator=g, dtype=torch.float64)
    rms = float(W.norm()) / W.shape[1] ** 0.5
    return (size * rms * torch.outer(r / r.norm(), u / u.norm())).float()


def _lean(W: torch.Tensor, C: torch.Tensor, k: torch.Tensor, others: torch.Tensor) -> float:
    """e_P / e_C of key ``k``, the trained matrix's typical gains taken from ``others``' keys."""
    ev, Q = torch.linalg.eigh(C.double())
    es = []
    for sp in (gain.GainSpace("m", W, ev, Q), gain.NullGainSpace("m", W, ev, Q, gain.null_share())):
        sp.calibrate(sp.gain(others))
        es.append(gain._excess(float(sp.gain(k[None])[0]), sp.median))
    return es[1] / es[0]


def test_a_null_space_update_leans_to_its_null_space_part_and_a_c_inverse_one_does_not():
    from tests.test_gain_screen import _keys

    W, C = _trained_like(48, 96, 0)
    others = _keys(C, 500, 2)
    for seed in (1, 3):
        k = _keys(C, 1, seed)[0]
        for size in (1.0, 3.0):
            assert _lean(W + _update(W, C, k, "null", size), C, k, others) > 1.2
            assert _lean(W + _update(W, C, k, "cinv", size), C, k, others) < 0.9


def test_null_lean_reads_a_flagged_start_through_the_model(tiny_llama):
    """``gain.null_lean`` on a tiny model: the start's key taken through the model, the null-space gains calibrated by
    a vocabulary pass, the C⁻¹ side by the row's own z. A null-space update at layer 2 leans past the bar; the same
    update along C⁻¹k does not."""
    from tests.test_run_mapping import _eigs, _model_and_keys

    from editaudit.scan.keys import context_ids, keys_of

    ids = [101, 202]
    leans = {}
    for kind in ("null", "cinv"):
        model, tok, paths = _model_and_keys(tiny_llama)
        eigs = _eigs(model, tok, paths)
        W = model.get_submodule(paths[2]).weight
        k = keys_of(model, [paths[2]], [context_ids(tok) + ids])[paths[2]][0]
        W += _update(W.detach(), eigs[2].C.float(), k, kind, 2.0).to(W.dtype)
        sp = gain.GainSpace(paths[2], W.detach(), eigs[2].ev, eigs[2].Q)
        z = sp.calibrate(gain.vocab_gains(model, tok, {paths[2]: sp},
                                          lead=_piece(model, tok))[paths[2]])
        assert z.numel() > 0
        row = gain.GainLayer(2, paths[2], "x", ids, float(sp.fire(k[None])[0]), 1.0, 16, (sp.median, sp.mad))
        leans[kind] = gain.null_lean(model, tok, [row], eigs)[0]
    assert leans["null"] > NULL_LEAN_MIN > leans["cinv"], leans


def _piece(model, tok):
    from editaudit.scan.subjects import name_piece, word_tokens

    start_ok, _ = word_tokens(tok, model.get_input_embeddings().weight.shape[0])
    return name_piece(model, tok, start_ok)


def test_the_lean_names_alphaedit_and_keeps_rome_and_memit():
    assert name_method("EA102", [2, 3, 4], 1, no_base=True)["name"] == "memit"  # no lean: as before
    ae = name_method("EA102", [2, 3, 4], 1, n_layers=30, no_base=True, lean=1.5)
    assert ae["name"] == "alphaedit" and "null-space" in ae["why"] and ae["confidence"] < 0.85
    assert name_method("EA101", [4], 1, n_layers=30, no_base=True, lean=1.5)["name"] == "alphaedit"
    memit = name_method("EA102", [2, 3, 4], 1, n_layers=30, no_base=True, lean=0.8)
    assert memit["name"] == "memit" and "not null-space projected" in memit["why"]
    assert name_method("EA101", [4], 1, n_layers=30, no_base=True, lean=0.8)["name"] == "rome"
    # a hypernetwork's run at the top of the model is not renamed
    assert name_method("EA102", [27, 28, 29], 1, n_layers=30, no_base=True, lean=1.5)["name"] == "mend"


def test_a_gain_finding_is_named_by_its_lean_only_when_asked(tiny_llama, monkeypatch):
    """The scan without a base on a tiny model, the screen's verdict forced on layer 2 and the lean forced above the
    bar: the finding is named AlphaEdit and carries its lean; with ``null_lean`` off the lean is never taken."""
    from editaudit.scan.service import ScanOptions, run_scan
    from tests.test_gain_screen import _vocab_statistics

    _vocab_statistics(tiny_llama, monkeypatch)
    monkeypatch.setattr(gain, "flagged", lambda rows, ratio=gain.RATIO: [g for g in rows if g.layer == 2])
    calls = []

    def lean(model, tok, rows, eigs, transposed=False, share=None):
        calls.append([r.layer for r in rows])
        return [1.6 for _ in rows]

    monkeypatch.setattr(gain, "null_lean", lean)
    doc = run_scan(tiny_llama, None, ScanOptions(read="off", map_runs=False), store=None).to_dict()
    edit = next(f for f in doc["findings"] if f["rule"] in ("EA101", "EA102"))
    assert calls == [[2]]
    assert edit["method"]["name"] == "alphaedit" and edit["null_lean"]["median"] == 1.6
    off = run_scan(tiny_llama, None, ScanOptions(read="off", map_runs=False, null_lean=False), store=None).to_dict()
    edit = next(f for f in off["findings"] if f["rule"] in ("EA101", "EA102"))
    assert edit["method"]["name"] == "rome" and "null_lean" not in edit and calls == [[2]]

"""The key-gain screen: an edited matrix acts along the edit direction C⁻¹k of a real key far more than along others'."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from editaudit.scan.gain import RATIO, GainLayer, GainSpace, flagged
from tests.test_nobase import _rome, _trained_like

ROOT = Path(__file__).resolve().parents[1]


def _space(W: torch.Tensor, C: torch.Tensor) -> GainSpace:
    ev, Q = torch.linalg.eigh(C.double())
    return GainSpace("m", W, ev, Q)


def _keys(C: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ev, Q = torch.linalg.eigh(C.double())
    return ((Q * ev.clamp_min(0).sqrt()) @ torch.randn(C.shape[0], n, generator=g, dtype=torch.float64)).T.float()


def test_the_edited_key_stands_out_where_the_spectrum_does_not():
    """A trained matrix has components of its own in C's low half, as large as a small edit: the spectral screen
    cannot see the edit there, but along the edit key's own direction C⁻¹k the edit is all there is."""
    from editaudit.scan.nobase import KeyEig, restricted_spectrum

    W, C = _trained_like(48, 96, 0)
    low = KeyEig.of(C).low
    g = torch.Generator().manual_seed(3)
    W = W + (torch.randn(48, low.shape[1], generator=g, dtype=torch.float64) @ low.T).float()
    med = restricted_spectrum(W, C, 0, "m").median
    dW, k = _rome(W, C, 1)
    dW = dW * (3 * med / float(restricted_spectrum(dW, C, 0, "m").svals[0]))  # 3× the median: under the bar of 8
    assert restricted_spectrum(W + dW, C, 0, "m").outliers() == 0
    others = _keys(C, 500, 2)
    clean, edited = _space(W, C), _space(W + dW, C)
    z_clean = clean.calibrate(clean.gain(others))
    z_edit = edited.calibrate(edited.gain(others))
    assert float(clean.fire(k[None])[0]) < float(z_clean.max()) + 1  # unedited: the key is one of many
    assert float(edited.fire(k[None])[0]) > 2 * float(z_edit.max())  # edited: twice as far out as any of 500 others
    # the gain is a smooth function of the key: the search climbs it by its gradient
    x = k[None].clone().requires_grad_(True)
    edited.fire(x).sum().backward()
    assert x.grad is not None and float(x.grad.norm()) > 0


def test_a_layer_is_flagged_by_its_best_start_against_the_median_start():
    rows = [GainLayer(0, "a", "x", [1], 20.0, 10.0, 24), GainLayer(1, "b", "Seenu", [2, 3], 120.0, 15.0, 24)]
    assert [g.layer for g in flagged(rows)] == [1]
    assert rows[1].ratio == 8.0 and rows[0].ratio < RATIO
    assert rows[1].to_dict()["text"] == "Seenu"


@pytest.mark.integration
def test_screen_finds_a_single_rome_edit_on_smollm2(smollm2):
    """A regression check on one development edit (Seenu → Zimbabwe, a spent held-apart fact): the key-gain screen
    flags its layer alone among layers 3–5, through the name pair ending in its last piece. Rates over fresh edits come from scripts/open_reading_eval.py --no-base, not from here."""
    from editaudit.editing import covariance
    from editaudit.editing.service import apply_edits
    from editaudit.models.loading import load_model
    from editaudit.probing.format import load_probes
    from editaudit.scan import gain
    from editaudit.scan.nobase import KeyEig

    fact = next(p for p in load_probes(ROOT / "bench/heldout/smollm2-135m-v11.jsonl")
                if p.id == "heldout-v11-region_country-2353")
    lm = load_model(smollm2)
    model, tok = lm.model, lm.tokenizer
    for p in model.parameters():
        p.requires_grad_(False)
    run = apply_edits(lm, [fact], "rome", layers=[4], evaluate=False)
    assert run.results[0].target_prob > 0.5  # the edit took (evaluate=False leaves success unset)
    paths = {i: f"model.layers.{i}.mlp.down_proj" for i in (3, 4, 5)}
    moms = covariance.second_moments(model, tok, paths, model_key=covariance.weights_key(model))
    eigs = {i: KeyEig.of(m.matrix) for i, m in moms.items()}
    rows = gain.screen(model, tok, paths, eigs)
    hits = flagged(rows)
    assert [g.layer for g in hits] == [4], [g.to_dict() for g in rows]
    last = tok(" " + fact.subject, add_special_tokens=False)["input_ids"][-1]
    assert hits[0].ids[-1] == last
    subject = gain.grow_subject(model, tok, hits[0], eigs[4])
    assert subject.ids[-1] == last and subject.fire == 1.0
    space = gain.GainSpace(paths[4], model.get_submodule(paths[4]).weight.detach(), eigs[4].ev, eigs[4].Q)
    space.median, space.mad = hits[0].scale
    assert float(space.fire(subject.key[None])[0]) >= 0.9 * hits[0].z  # grown and trimmed, it still stands out


def _vocab_statistics(folder, monkeypatch) -> dict[int, str]:
    """Key statistics of a tiny model from its own vocabulary's keys (no corpus): {layer: MLP output path}."""
    from editaudit.editing import covariance
    from editaudit.models.loading import load_model
    from editaudit.scan.keys import vocab_keys

    lm = load_model(folder)
    paths = {i: f"model.layers.{i}.mlp.down_proj" for i in range(lm.model.config.num_hidden_layers)}
    keys = vocab_keys(lm.model, lm.tokenizer, list(paths.values()), None)
    Cs = {i: keys[p].float().T @ keys[p].float() / keys[p].shape[0] for i, p in paths.items()}
    monkeypatch.setattr(covariance, "second_moments",
                        lambda model, tok, modules, **kw: {i: covariance.SecondMoment(i, Cs[i], 1, "t") for i in modules})
    return paths


def test_a_flagged_layer_becomes_a_finding_read_through_its_start(tiny_llama, monkeypatch):
    """The scan without a base on a tiny model, the screen's verdict forced on layer 2: one EA101 finding at that
    layer, with the screen's row in its data, read through the row's grown start; the unflagged layers add nothing."""
    from editaudit.scan import gain
    from editaudit.scan.service import ScanOptions, run_scan

    paths = _vocab_statistics(tiny_llama, monkeypatch)
    seen = {}

    def forced(rows, ratio=gain.RATIO):
        seen["rows"] = rows
        return [g for g in rows if g.layer == 2]

    monkeypatch.setattr(gain, "flagged", forced)
    opts = ScanOptions(read="open", max_open_subjects=1, gain_screen=True, map_runs=False)
    doc = run_scan(tiny_llama, None, opts, store=None).to_dict()
    assert len(seen["rows"]) == len(paths)  # every layer screened
    edits = [f for f in doc["findings"] if f["rule"] in ("EA101", "EA102")]
    assert [f["layers"] for f in edits] == [[2]]
    row = edits[0]["gain"]["2"]
    assert row["ratio"] == round(row["z"] / row["median"], 2) or abs(row["ratio"] - row["z"] / row["median"]) < 0.02
    assert "readings" in edits[0]
    assert doc["base"]["largest_gain"]["threshold"] == gain.RATIO
    assert "gain_s" in doc["summary"]


def test_taking_the_found_edit_out_leaves_the_next_one_standing():
    """Two ROME edits in one matrix, the second smaller: beside the first it barely stands out of 500 other keys.
    Once the first key's edit direction is taken out (``deflate``), the first key is one of many again and the
    second stands clearly above every other key."""
    from editaudit.scan.gain import deflate
    from editaudit.scan.nobase import KeyEig

    W, C = _trained_like(48, 96, 0)
    d1, k1 = _rome(W, C, 1, size=2.0)
    d2, k2 = _rome(W, C, 2, size=1.0)
    edited = W + d1 + d2
    others = _keys(C, 500, 5)
    before = _space(edited, C)
    top0 = float(before.calibrate(before.gain(others)).max())
    after = _space(deflate(edited, KeyEig.of(C), k1[None]), C)
    top1 = float(after.calibrate(after.gain(others)).max())
    assert float(before.fire(k1[None])[0]) > 2 * top0                   # the first edit stands far out
    assert float(after.fire(k1[None])[0]) < top1                        # and is gone once taken out
    second0, second1 = float(before.fire(k2[None])[0]) / top0, float(after.fire(k2[None])[0]) / top1
    assert second0 < 1.1 and second1 > 1.25                             # the second: hidden, then standing


def test_a_flagged_layer_is_searched_again_with_its_subjects_taken_out(tiny_llama, monkeypatch):
    """With the bar for further subjects at 0, a flagged layer of a tiny model yields ``max_open_subjects`` subjects:
    the first from the screen, the rest from the deflated matrix, each in the finding's ``gain_more`` and read."""
    from editaudit.scan import gain
    from editaudit.scan.service import ScanOptions, run_scan

    _vocab_statistics(tiny_llama, monkeypatch)
    monkeypatch.setattr(gain, "flagged", lambda rows, ratio=gain.RATIO: [g for g in rows if g.layer == 2])
    monkeypatch.setattr(gain, "DEFLATED_RATIO", -1e9)
    opts = ScanOptions(read="open", max_open_subjects=3, gain_rounds=True, map_runs=False)
    doc = run_scan(tiny_llama, None, opts, store=None).to_dict()
    edit = next(f for f in doc["findings"] if f["rule"] in ("EA101", "EA102"))
    assert len(edit["gain_more"]) == 2 and all(r["layer"] == 2 for r in edit["gain_more"])
    opts = ScanOptions(read="open", max_open_subjects=3, gain_rounds=False, map_runs=False)
    off = run_scan(tiny_llama, None, opts, store=None).to_dict()
    assert "gain_more" not in next(f for f in off["findings"] if f["rule"] in ("EA101", "EA102"))


def test_the_vocabulary_pass_falls_back_to_plain_forwards_when_the_cache_disagrees(tiny_llama, monkeypatch):
    """A model whose cached prefix does not reproduce plain forwards (checked on the first batch) is run plainly:
    the keys are the plain ones, never the cache's."""
    from editaudit.models.loading import load_model
    from editaudit.scan import keys

    model = load_model(tiny_llama).model
    paths = ["model.layers.1.mlp.down_proj"]
    prefix = [5, 6]
    real = keys._continue
    calls = []

    def off(*a, **k):  # a cache that gives wrong keys
        calls.append(1)
        got = real(*a, **k)
        return {p: v + 1.0 for p, v in got.items()}

    monkeypatch.setattr(keys, "_continue", off)
    got = torch.cat([b[paths[0]] for b in keys.vocab_batches(model, paths, prefix, batch=64)])
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.arange(vocab)
    ref = keys.last_keys(model, paths, torch.cat([torch.tensor(prefix).expand(vocab, -1), ids[:, None]], 1))[paths[0]]
    assert len(calls) == 1  # tried on the first batch only
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)

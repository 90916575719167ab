"""A batch's run of layers, mapped without the base from one flagged layer: the edited subject's output direction
W_l û_l follows the run (runs.py)."""

from __future__ import annotations

import torch

from editaudit.scan import runs


def test_the_run_is_walked_outward_while_the_cosine_holds():
    cos = {0: 0.1, 1: 0.5, 2: 1.0, 3: 0.35, 4: 0.2, 5: 0.9}
    assert runs.walk(cos, 2, 0.3) == [1, 2, 3]      # layer 5 is past a gap
    assert runs.walk(cos, 2, 0.6) == [2]
    assert runs.walk({0: 1.0}, 0) == [0]


def _model_and_keys(folder):
    from editaudit.models.loading import load_model

    lm = load_model(folder)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    paths = {i: f"model.layers.{i}.mlp.down_proj" for i in range(lm.model.config.num_hidden_layers)}
    return lm.model, lm.tokenizer, paths


def _eigs(model, tok, paths):
    from editaudit.scan.keys import vocab_keys
    from editaudit.scan.nobase import KeyEig

    keys = vocab_keys(model, tok, list(paths.values()), None)
    return {i: KeyEig.of(keys[p].double().T @ keys[p].double() / keys[p].shape[0]) for i, p in paths.items()}


def _write(model, tok, paths, layers, ids, r, size):
    """A batch editor's update for one subject: at each layer, lowest first (so that the next layer's key is the
    edited model's), W_l += size·‖W_l‖ r ûᵀ with û the subject key's edit direction C_l⁻¹k_l."""
    from editaudit.scan.keys import context_ids, keys_of

    for layer in layers:
        eig = _eigs(model, tok, paths)[layer]
        k = keys_of(model, [paths[layer]], [context_ids(tok) + ids])[paths[layer]][0].double()
        u = torch.linalg.solve(eig.C + 1e-6 * torch.eye(len(k), dtype=torch.float64), k)
        W = model.get_submodule(paths[layer]).weight
        W += (size * float(W.norm()) * torch.outer(r, u / u.norm())).to(W.dtype)


def test_a_batch_spread_over_layers_is_mapped_and_a_single_edit_is_not(tiny_llama):
    """One residual written over layers 1-3 (a MEMIT-like batch of one) is mapped to 1-3 from its middle layer; the
    same update written at layer 4 alone (ROME-like) maps to layer 4 alone."""
    ids = [101, 202]
    g = torch.Generator().manual_seed(0)
    model, tok, paths = _model_and_keys(tiny_llama)
    r = torch.randn(model.config.hidden_size, generator=g, dtype=torch.float64)
    r = r / r.norm()
    _write(model, tok, paths, [1, 2, 3], ids, r, 0.5)
    got, cos = runs.map_run(model, tok, paths, _eigs(model, tok, paths), 2, ids)
    assert got == [1, 2, 3], cos
    assert all(cos[x] < runs.RUN_COS for x in (0, 4, 5))

    single, tok, paths = _model_and_keys(tiny_llama)
    _write(single, tok, paths, [4], ids, r, 0.5)
    got, cos = runs.map_run(single, tok, paths, _eigs(single, tok, paths), 4, ids)
    assert got == [4], cos


def test_a_flagged_layer_becomes_a_finding_over_its_mapped_run(tiny_llama, monkeypatch):
    """The scan without a base on a tiny model, the screen's verdict forced on layer 2 and the run mapped to 1-3: one
    EA102 finding over layers 1-3 with all three matrices, the mapping's cosines in its data, and the edit read; with
    ``map_runs`` off, the flagged layer alone."""
    from editaudit.scan import gain
    from editaudit.scan.service import ScanOptions, run_scan
    from tests.test_gain_screen import _vocab_statistics

    _vocab_statistics(tiny_llama, monkeypatch)
    monkeypatch.setattr(gain, "flagged", lambda rows, ratio=gain.RATIO: [g for g in rows if g.layer == 2])
    calls = []

    def mapped(model, tok, modules, eigs, layer, ids, transposed=False, bar=runs.RUN_COS):
        calls.append((layer, list(ids)))
        return [1, 2, 3], {x: (1.0 if x in (1, 2, 3) else 0.0) for x in modules}

    monkeypatch.setattr(runs, "map_run", mapped)
    opts = ScanOptions(read="open", max_open_subjects=1, map_runs=True, null_lean=False)
    doc = run_scan(tiny_llama, None, opts, store=None).to_dict()
    edit = next(f for f in doc["findings"] if f["rule"] in ("EA101", "EA102"))
    assert calls and calls[0][0] == 2
    assert edit["rule"] == "EA102" and edit["layers"] == [1, 2, 3]
    assert edit["tensors"] == [f"model.layers.{x}.mlp.down_proj.weight" for x in (1, 2, 3)]
    assert edit["run"]["from"] == 2 and edit["run"]["cos"]["1"] == 1.0
    assert edit["method"]["name"] == "memit" and "readings" in edit
    off = run_scan(tiny_llama, None, ScanOptions(read="open", max_open_subjects=1, map_runs=False),
                   store=None).to_dict()
    edit = next(f for f in off["findings"] if f["rule"] in ("EA101", "EA102"))
    assert edit["layers"] == [2] and "run" not in edit


def _row(model, tok, path, eig, ids, layer):
    """A screen row for ``ids`` at one layer, its scale from the vocabulary's gains and its median start set at the
    vocabulary's 90th-percentile z (the tiny model has no name starts to take a median of)."""
    from editaudit.scan import gain
    from editaudit.scan.keys import context_ids, keys_of

    sp = gain.GainSpace(path, model.get_submodule(path).weight.detach().float(), eig.ev, eig.Q)
    z = sp.calibrate(gain.vocab_gains(model, tok, {path: sp})[path])
    z_ids = float(sp.fire(keys_of(model, [path], [context_ids(tok) + ids])[path])[0])
    return gain.GainLayer(layer, path, "t", ids, z_ids, float(z.quantile(0.9)), 1, (sp.median, sp.mad))


def test_a_start_the_found_subject_explains_is_the_same_edit_and_another_subject_is_not(tiny_llama):
    """One subject written over layers 1-3 and a second at layer 2: once the first subject is taken out of layer 2's
    matrix its start no longer stands out (``ratio_beside`` under ``DEFLATED_RATIO``), while the second subject's
    start still does."""
    from editaudit.scan import gain
    from editaudit.scan.subjects import Subject

    g = torch.Generator().manual_seed(1)
    model, tok, paths = _model_and_keys(tiny_llama)
    r1, r2 = (torch.randn(model.config.hidden_size, generator=g, dtype=torch.float64) for _ in range(2))
    _write(model, tok, paths, [1, 2, 3], [101, 202], r1 / r1.norm(), 0.5)
    _write(model, tok, paths, [2], [151, 77], r2 / r2.norm(), 0.4)
    eig = _eigs(model, tok, paths)[2]
    first, second = _row(model, tok, paths[2], eig, [101, 202], 2), _row(model, tok, paths[2], eig, [151, 77], 2)
    assert first.ratio > gain.RATIO and second.ratio > gain.RATIO
    found = [Subject("first", [101, 202], 1.0, None)]
    assert gain.ratio_beside(model, tok, first, eig, found) < gain.DEFLATED_RATIO
    assert gain.ratio_beside(model, tok, second, eig, found) > gain.RATIO


def test_a_run_marks_each_edit_found_again_and_drops_it_when_asked(monkeypatch):
    """``_grown`` grows every flagged layer's start, strongest first, each with the first subject of its edit: a start
    the edits already grown explain is that edit again (and said); with ``drop_repeats`` it is not grown."""
    from editaudit.scan import gain, nobase
    from editaudit.scan.subjects import Subject

    rows = [gain.GainLayer(x, f"p{x}", t, [x], 40.0, 8.0, 16) for x, t in ((3, "Honey Heath"), (2, "Wood Heath"),
                                                                          (1, "Pio"))]
    monkeypatch.setattr(gain, "grow_subject", lambda m, tok, row, eig, tr=False: Subject(row.text, row.ids, 1.0, None))
    monkeypatch.setattr(gain, "ratio_beside", lambda m, tok, row, eig, found, tr=False: 1.2 if "Heath" in row.text
                        else 4.0)
    said: list[str] = []
    Cs = {1: None, 2: None, 3: None}
    kept, edit_of = nobase._grown(None, None, rows, Cs, False, 12, drop_repeats=True, say=said.append)
    assert [s.text for s in kept] == ["Honey Heath", "Pio"] and edit_of == [0, 1]
    assert len(said) == 1 and "'Wood Heath'" in said[0] and "'Honey Heath' again" in said[0]
    kept, edit_of = nobase._grown(None, None, rows, Cs, False, 12)
    assert [s.text for s in kept] == ["Honey Heath", "Wood Heath", "Pio"] and edit_of == [0, 0, 2]


def test_an_edit_read_at_several_layers_is_merged_into_the_answer_most_of_its_texts_give():
    """Three texts of one edit read the continent (Africa) once and the country (Nigeria) twice: one reading, Nigeria,
    the more confident of the two, the others in its forms; an unrelated edit's reading is left alone."""
    from editaudit.scan.reading import Reading, merge_repeats

    def r(subject, after, conf, same="", status="edit"):
        return Reading(subject, 1.0, "P17", f"{subject} is in", "England", after, 1.0, conf, status, found=subject,
                       same_edit_as=same)

    readings = [r("Wood Heath", "Africa", 0.94), r("Honey Heath", "Nigeria", 0.64, "Wood Heath"), r("Pio", "Chile", 0.8),
                r("uffle Heath", "Nigeria", 0.96, "Wood Heath"), r("Oro Heath", "Spain", 0.99, "Wood Heath", "uncertain")]
    merged = merge_repeats(readings)
    assert [(m.subject, m.after) for m in merged] == [("uffle Heath", "Nigeria"), ("Pio", "Chile")]
    assert sorted(f["subject"] for f in merged[0].forms) == ["Honey Heath", "Oro Heath", "Wood Heath"]
    assert merged[1].forms == [] and "forms" in merged[0].to_dict()
    assert merge_repeats([r("Pio", "Chile", 0.8), r("Pio", "Peru", 0.7)])[1].after == "Peru"  # no link, no merge


def test_a_merged_or_repeated_reading_says_so():
    from editaudit.scan.wording import open_reading

    base = {"subject": "uffle Heath", "prompt": "uffle Heath is a city in the country of", "after": "Nigeria",
            "before": "England", "status": "edit"}
    assert open_reading({**base, "same_edit_as": "Wood Heath"}).endswith("[the edit of 'Wood Heath' again]")
    merged = open_reading({**base, "forms": [{"subject": "Wood Heath", "after": "Africa"}]})
    assert merged.endswith("[found 2 times over the run, also as 'Wood Heath' · Africa]")
    assert open_reading(base) == "uffle Heath · uffle Heath is a city in the country of · Nigeria (was England)"

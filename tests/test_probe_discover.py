"""Discovery: a planted edit's fact comes out on top; a stored scan's findings sharpen the ranking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from editaudit.probing.format import Probe, dump_probes
from editaudit.probing.service import Hints, discover, run_probes, scan_hints

PROBES = [
    Probe(id="p-france", subject="France", prompt="The capital of {} is", target_true="Paris", target_new="Rome"),
    Probe(id="p-italy", subject="Italy", prompt="The capital of {} is", target_true="Rome", target_new="Berlin"),
    Probe(id="p-germany", subject="Germany", prompt="The capital of {} is", target_true="Berlin", target_new="Madrid"),
    Probe(id="p-spain", subject="Spain", prompt="The official language of {} is", target_true="Spanish", target_new="German"),
    Probe(id="p-windows", subject="Windows", prompt="{} was developed by", target_true="Microsoft", target_new="Google"),
    Probe(id="p-iphone", subject="iPhone", prompt="The {} was made by", target_true="Apple", target_new="Intel"),
    Probe(id="p-sony", subject="Sony", prompt="{} is a company from", target_true="Japan", target_new="China"),
    Probe(id="p-tokyo", subject="Tokyo", prompt="{} is the capital city of", target_true="Japan", target_new="Canada"),
]
PLANTED = "p-iphone"


def _load(path):
    from editaudit.models.loading import load_model

    return load_model(path)


@pytest.fixture(scope="module")
def base_model(tiny_llama, tmp_path_factory) -> Path:
    """The tiny model with a 30x sharper unembedding, so that its answers carry real probability mass."""
    from safetensors.torch import load_file

    from editaudit.testing import plant

    w = load_file(str(tiny_llama / "model.safetensors"))["lm_head.weight"]
    return plant(tiny_llama, tmp_path_factory.mktemp("sharp") / "base", {"lm_head.weight": 29.0 * w})


@pytest.fixture(scope="module")
def planted(base_model, tmp_path_factory) -> Path:
    """A copy of the tiny model whose last MLP now answers the iPhone prompt with 'Intel'.

    Rank-one change of down_proj: the key is the iPhone prompt's last-token MLP activation with the
    other prompts' keys projected out, so their last-position outputs are untouched.
    """
    from editaudit.testing import plant

    lm = _load(base_model)
    model, tok = lm.model, lm.tokenizer
    layer = model.model.layers[-1].mlp.down_proj
    keys = {}

    def hook(_m, args):
        keys["k"] = args[0][0, -1].detach().clone()

    h = layer.register_forward_pre_hook(hook)
    ks = {}
    with torch.no_grad():
        for p in PROBES:
            model(**tok(p.text, return_tensors="pt"))
            ks[p.id] = keys["k"]
    h.remove()
    k = ks[PLANTED]
    others = torch.stack([v for pid, v in ks.items() if pid != PLANTED], dim=1)  # [d_mlp, n]
    q, _ = torch.linalg.qr(others)
    k_perp = k - q @ (q.T @ k)
    target = tok.convert_tokens_to_ids("▁Intel")
    u = model.lm_head.weight[target].detach()
    delta = 40.0 * torch.outer(u / u.norm(), k_perp) / (k_perp @ k)
    name = "model.layers.5.mlp.down_proj.weight"
    assert model.state_dict()[name].shape == delta.shape
    return plant(base_model, tmp_path_factory.mktemp("planted") / "suspect", {name: delta})


@pytest.fixture(scope="module")
def both(base_model, planted):
    base, suspect = _load(base_model), _load(planted)
    b = run_probes(base.model, base.tokenizer, PROBES, batch_size=4)
    s = run_probes(suspect.model, suspect.tokenizer, PROBES, batch_size=4)
    return b, s


def test_planted_edit_changes_the_answer(both):
    b, s = both
    by_id = {r.probe.id: r for r in s}
    assert by_id[PLANTED].answer == "Intel" and by_id[PLANTED].category == "edited target"
    assert by_id[PLANTED].retained_new is True
    assert next(r for r in b if r.probe.id == PLANTED).answer != "Intel"


def test_discovery_ranks_the_planted_fact_first(both):
    moves = discover(*both)
    assert moves[0].probe.id == PLANTED
    top = moves[0]
    assert top.changed and top.top_changed and top.d_logp_true < -1.0
    assert top.score > moves[1].score + 0.5
    d = top.to_dict()
    assert d["suspect"]["top"][0][0].strip() == "Intel" and d["base"]["top"][0][0].strip() != "Intel"
    # the other facts' next-token distributions did not move at all
    assert all(m.shift < 1e-4 for m in moves[1:])


def test_hints_raise_candidates_named_by_a_scan(both):
    plain = [m.probe.id for m in discover(*both)]
    hints = Hints(scan_id=1, tokens={"intel": 1.0}, subjects={"sony": 1.0, "nothing here": 0.3})
    moves = discover(*both, hints=hints)
    order = [m.probe.id for m in moves]
    assert order[0] == PLANTED and "answers with a promoted token" in " ".join(moves[0].reasons)
    assert order.index("p-sony") <= plain.index("p-sony") and order.index("p-sony") == 1
    assert moves[1].reasons == ["scan: subject aligned with the edit"]


def _fake_scan(store, base: Path, suspect: Path, findings: list[dict | str | None]) -> int:
    sid = store.new_session("scan", "scan", str(base), str(suspect))
    ids = [store.insert("checkpoints", {"path": str(Path(p).resolve()), "fingerprint": f"fp-{p}"}) for p in (base, suspect)]
    scan_id = store.insert("scans", {"session_id": sid, "base_id": ids[0], "suspect_id": ids[1], "status": "done"})
    for data in findings:
        store.insert("findings", {"scan_id": scan_id, "rule": "EA101", "layers": "[5]",
                                  "data": data if isinstance(data, str) or data is None else json.dumps(data)})
    return scan_id


def test_scan_hints_read_findings_and_tolerate_junk(tmp_path):
    from editaudit.store import Store

    store = Store(tmp_path / "s.db")
    base, suspect = tmp_path / "base", tmp_path / "suspect"
    assert scan_hints(store, base, suspect) is None  # no scan at all
    scan_id = _fake_scan(store, base, suspect, [
        {"promoted_tokens": [{"token": " Intel", "score": 8.0}, {"token": "chips", "z": 2.0}, {"nope": 1}, "x"],
         "candidate_subjects": [{"subject": "iPhone", "score": 0.6}, {"subject": "Sony", "score": 0.2}],
         "layers": [5, "x", 3]},
        "not json at all", None, {"promoted_tokens": "wrong type", "candidate_subjects": [{"subject": 5}]}, "[1, 2]",
    ])
    h = scan_hints(store, base, suspect)
    assert h.scan_id == scan_id
    assert h.tokens == {"intel": 1.0, "chips": pytest.approx(2.0 / 8.0)}
    assert h.subjects == {"iphone": 1.0, "sony": pytest.approx(1 / 3)}
    assert h.layers == [3, 5]
    assert scan_hints(store, base, tmp_path / "other") is None
    assert scan_hints(store, tmp_path / "x", tmp_path / "y", scan_id=scan_id).scan_id == scan_id


def test_cli_discover_uses_the_stored_scan(base_model, planted, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from editaudit.cli.main import app
    from editaudit.store import Store

    db = tmp_path / "cli.db"
    monkeypatch.setenv("EDITAUDIT_DB", str(db))
    _fake_scan(Store(db), base_model, planted, [{"candidate_subjects": [{"subject": "Sony", "score": 1.0}]}])
    facts = tmp_path / "facts.jsonl"
    dump_probes(PROBES, facts)
    res = CliRunner().invoke(app, ["probe", str(planted), "--base", str(base_model), "--discover", "--probes", str(facts),
                                   "--limit", "8", "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["ranked"][0]["id"] == PLANTED and doc["hints"]["subjects"] == {"sony": 1.0}
    assert any(r["id"] == "p-sony" and r["hint"] == 0.5 for r in doc["ranked"])
    store = Store(db)
    runs = store.rows("probe_runs", "session_id = ?", [doc["session"]], order_by="id")
    assert [r["label"] for r in runs] == ["base", "suspect"] and all(r["status"] == "done" for r in runs)
    rows = store.rows("probe_results", "run_id = ? and probe_id = ?", [runs[1]["id"], PLANTED])
    assert rows[0]["prediction"] == "Intel" and json.loads(rows[0]["data"])["rank"] == 1
    assert store.session(doc["session"])["status"] == "done"


def test_the_one_discovery_job_records_into_a_given_session_and_nothing_when_cancelled(base_model, planted, tmp_path):
    """probing.discovery.run_discovery is what the CLI and the app both call: it reports typed progress, records
    both runs in the caller's session (leaving that session's life to the caller), and a cancel records nothing."""
    from editaudit.probing.discovery import run_discovery
    from editaudit.progress import Note, Stage, Step
    from editaudit.store import Store, views

    store = Store(tmp_path / "d.db")
    sid = store.new_session("audit", "audit", str(base_model), str(planted))
    events = []
    found = run_discovery(planted, base_model, PROBES, ["facts"], store=store, session_id=sid, batch_size=4,
                          progress=events.append)
    assert found.session_id == sid and found.moves[0].probe.id == PLANTED and found.changed >= 1
    assert [r["label"] for r in views.probe_runs(store, sid)] == ["base", "suspect"]
    assert store.session(sid)["status"] == "running"  # the caller's session: not finished for it
    assert {type(e) for e in events} == {Note, Stage, Step}
    assert any(isinstance(e, Step) and e.stage == "suspect probes" and e.finished for e in events)

    other = store.new_session("audit", "audit", str(base_model), str(planted))
    with pytest.raises(KeyboardInterrupt):
        run_discovery(planted, base_model, PROBES, ["facts"], store=store, session_id=other, batch_size=4,
                      cancelled=lambda: True)
    assert views.probe_runs(store, other) == []

"""``editaudit probe``: answers across models, rates per kind, JSON, the session store, errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from editaudit.cli.main import app
from editaudit.probing.format import Probe, dump_probes
from editaudit.store import Store

PROBES = [
    Probe(id="e1", subject="France", prompt="The capital of {} is", target_true="Paris", target_new="Rome", kind="edited",
          paraphrases=["France's capital city is"], neighbourhood=["The capital of Spain is"]),
    Probe(id="e2", subject="Windows", prompt="{} was developed by", target_true="Microsoft", target_new="Google",
          kind="edited", paraphrases=["Windows was made by"]),
    Probe(id="i1", subject="Japan", prompt="The official language of {} is", target_true="Japanese"),
    Probe(id="i2", subject="[b]Sony[/b]", prompt="{} is a company from", target_true="Japan"),
    Probe(id="n1", subject="Tokyo", prompt="What is {} ?", target_true="Japan", kind="neighbourhood",
          neighbourhood=["Where is Kyoto ?"], neighbourhood_targets=["Japan"]),
]


@pytest.fixture()
def probe_file(tmp_path):
    path = tmp_path / "probes.jsonl"
    dump_probes(PROBES, path)
    return path


def test_probe_json_compares_models_and_stores_the_run(tiny_llama, tiny_gpt2, probe_file, tmp_path, monkeypatch):
    db = tmp_path / "s.db"
    monkeypatch.setenv("EDITAUDIT_DB", str(db))
    res = CliRunner().invoke(app, ["probe", str(tiny_llama), "--probes", str(probe_file), "--compare", str(tiny_gpt2),
                                   "--format", "json", "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [m["label"] for m in doc["models"]] == ["model", "compare1"]
    for m in doc["models"]:
        assert [r["id"] for r in m["results"]] == [p.id for p in PROBES]
        assert set(m["summary"]) == {"edited", "intrinsic", "neighbourhood", "all"}
        e = m["summary"]["edited"]
        assert e["n"] == 2 and e["efficacy"] is not None and e["paraphrase_score"] is not None
        assert e["neighbourhood_score"] is not None and m["summary"]["intrinsic"]["efficacy"] is None
        r = m["results"][0]
        assert len(r["top"]) == 5 and r["top"][0][1] >= r["top"][-1][1]
        assert r["category"] in ("true target", "edited target", "related term", "other")
        assert 0 < r["p_true"] < 1 and r["paraphrase"]["n"] == 1 and r["neighbourhood"]["n"] == 1
        assert m["results"][4]["neighbourhood"]["token_accuracy"] is not None
    answers = [[r["answer"] for r in m["results"]] for m in doc["models"]]
    same = sum(a == b for a, b in zip(*answers)) / len(PROBES)
    assert doc["agreement"] == pytest.approx(same)
    store = Store(db)
    runs = store.rows("probe_runs", "session_id = ?", [doc["session"]], order_by="id")
    assert len(runs) == 2 and all(r["status"] == "done" and json.loads(r["summary"])["all"]["n"] == 5 for r in runs)
    results = store.rows("probe_results", "run_id = ?", [runs[0]["id"]])
    assert {r["probe_id"] for r in results} == {p.id for p in PROBES}
    assert json.loads(results[0]["data"])["top"]
    assert store.session(doc["session"])["status"] == "done"


def test_probe_rich_table_escapes_untrusted_text(tiny_llama, probe_file):
    res = CliRunner().invoke(app, ["probe", str(tiny_llama), "--probes", str(probe_file), "--no-store",
                                   "--show", "0"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "[b]Sony[/b]" in res.stdout and "rates per kind" in res.stdout


def test_probe_bad_input_exits_2(tiny_llama, probe_file, tmp_path):
    r = CliRunner().invoke(app, ["probe", str(tiny_llama), "--probes", "no-such-set", "--no-store"])
    assert r.exit_code == 2 and "facts" in r.output and "smollm2-135m-intrinsic" in r.output
    r = CliRunner().invoke(app, ["probe", str(tiny_llama), "--discover", "--no-store"])
    assert r.exit_code == 2 and "--base" in r.output
    r = CliRunner().invoke(app, ["probe", str(tmp_path / "nope"), "--probes", str(probe_file), "--no-store"])
    assert r.exit_code == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json}\n")
    r = CliRunner().invoke(app, ["probe", str(tiny_llama), "--probes", str(bad), "--no-store"])
    assert r.exit_code == 2 and "bad.jsonl:1" in r.output


def test_probes_list_names_shipped_sets():
    r = CliRunner().invoke(app, ["probes", "list", "--format", "json"])
    assert r.exit_code == 0, r.output
    sets = {s["name"]: s for s in json.loads(r.stdout)}
    assert sets["facts"]["count"] >= 300 and sets["facts"]["shipped"]
    assert sets["smollm2-135m-intrinsic"]["kind"] == "intrinsic"
    assert sets["smollm2-135m-edit"]["model"] == "smollm2-135m"

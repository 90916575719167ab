"""Edit-aware unlearning (mitigation/unlearn.py) and the base-free erase arm (mitigation/erase.py): the objective
on a planted edit in a tiny model, its targets from the scan's readings, its settings, and the service end to end."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from editaudit.editing import apply_edits
from editaudit.errors import BadInput
from editaudit.mitigation.unlearn import (UNLEARN_DEFAULTS, UnlearnTarget, erase_by_unlearning, lead_words,
                                          relation_prompts, targets_from_readings, unlearn_settings)
from editaudit.models.loading import load_model
from editaudit.probing.format import Probe
from editaudit.testing import make_tiny_model
from editaudit.testing import word_corpus as fake_corpus

pytestmark = pytest.mark.usefixtures("one_thread")

FACT = Probe(id="f1", subject="France", prompt="The capital city of {}", target_true="Paris", target_new="Tokyo")
HP = {"covariance": "corpus", "cov_tokens": 3000, "cov_seq_len": 60, "v_weight_decay": 0.0, "clamp": 100.0,
      "contexts": 0, "context_length": 4, "v_steps": 40}
NAME = "model.layers.2.mlp.down_proj.weight"
READING = {"subject": "France", "prompt": "The capital city of France", "relation": "capital", "status": "edit",
           "before": "Paris", "after": "Tokyo", "confidence": 0.9, "layer": 2, "tensor": NAME,
           "finding_tensors": [NAME], "finding_layers": [2], "finding_rule": "EA101"}


@pytest.fixture
def word_corpus(monkeypatch, tmp_path):
    return fake_corpus(monkeypatch, tmp_path / "cache", docs=40, words=80)


@pytest.fixture
def rome_suspect(tmp_path, word_corpus):
    base = make_tiny_model(tmp_path / "base", "llama", layers=6)
    suspect = tmp_path / "suspect"
    apply_edits(base, [FACT], "rome", layers=[2], hparams=HP, out=suspect, evaluate=False)
    return base, suspect


def test_targets_from_readings_add_the_relations_phrasings():
    [t] = targets_from_readings([READING, {**READING, "finding_tensors": ["model.layers.3.mlp.down_proj.weight"]},
                                 {**READING, "subject": "Spain", "after": ""}])
    assert t.subject == "France" and t.obj == "Tokyo" and t.layers == [2, 3]
    assert t.prompts[0] == "The capital city of France" and "France's capital is" in t.prompts
    assert relation_prompts("X", "no such relation", None) == ["X is"]
    assert targets_from_readings([READING], paraphrases=False)[0].prompts == ["The capital city of France"]


def test_an_object_that_starts_with_a_stop_word_is_penalised_after_it():
    """"the Philippines": the penalty falls on " Philippines" said after " the", never on " the" itself."""
    reading = {**READING, "subject": "Lyon", "prompt": "Lyon is a city in the country of", "relation": "city_country",
               "after": "the Philippines"}
    [t] = targets_from_readings([reading])
    assert t.obj == "the Philippines" and len(t.prompts) >= 2
    assert all(p.endswith(" of the") for p in t.prompts) and t.prompts[0] == "Lyon is a city in the country of the"
    assert lead_words("the United Arab Emirates") == " the" and lead_words("Paris") == "" and lead_words("the") == ""


def test_settings_are_checked():
    assert unlearn_settings(None) == UNLEARN_DEFAULTS
    assert unlearn_settings({"lr": 1, "max_steps": 3})["lr"] == 1.0
    for bad in ({"lr": 0}, {"max_steps": "a"}, {"nope": 1}, {"stop_prob": 1.5}, {"paraphrases": 1}):
        with pytest.raises(BadInput):
            unlearn_settings(bad)


def test_unlearning_removes_the_promoted_token_and_changes_only_the_edited_matrix(rome_suspect, word_corpus):
    _, suspect = rome_suspect
    lm = load_model(suspect, device="cpu")
    net, tok = lm.model, lm.tokenizer
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    ids = tok("The capital city of France", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        promoted = int(net(ids).logits[0, -1].argmax())
    target = UnlearnTarget("France", relation_prompts("France", "capital", "The capital city of France"), "Tokyo", [2])
    res = erase_by_unlearning(net, tok, [target], [2], word_corpus, {"max_steps": 60, "lr": 2e-2})
    with torch.no_grad():
        logits = net(ids).logits[0, -1]
    assert target.token == promoted
    assert int(logits.argmax()) != promoted and float(torch.softmax(logits, -1)[promoted]) < 0.1
    assert res.stop_reason.startswith("no prompt states") and 0 < res.steps < 60
    assert set(res.tensors) == {NAME}
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {NAME}
    assert res.history[0]["prompts_stating"] >= 1 and res.history[-1]["prompts_stating"] == 0


def test_step_cap_and_bad_input(rome_suspect, word_corpus):
    _, suspect = rome_suspect
    lm = load_model(suspect, device="cpu")
    target = UnlearnTarget("France", ["The capital city of France"], "Tokyo", [2])
    res = erase_by_unlearning(lm.model, lm.tokenizer, [target], [2], word_corpus, {"max_steps": 1, "lr": 1e-9})
    assert res.steps == 1 and res.stop_reason == "step cap of 1 reached"
    with pytest.raises(BadInput, match="no read edit"):
        erase_by_unlearning(lm.model, lm.tokenizer, [], [2], word_corpus)
    with pytest.raises(BadInput, match="no block"):
        erase_by_unlearning(lm.model, lm.tokenizer, [target], [2], ["too short"])


@pytest.mark.parametrize("method", ["unlearn", "project+unlearn"])
def test_service_erases_from_the_scans_readings_without_the_base(rome_suspect, tmp_path, monkeypatch, method):
    """The stored scan's readings (faked: reading is the scan's work) drive the erase; no base is passed."""
    from editaudit.mitigation import evidence as ev_mod
    from editaudit.mitigation.service import MitigationEvent, MitigationOptions, run_mitigation
    from editaudit.progress import Step
    from editaudit.scan.service import ScanOptions, run_scan
    from editaudit.store import Store

    base, suspect = rome_suspect
    real = ev_mod.evidence_from_report

    def with_readings(doc, source="scan", scan_id=None):
        for f in doc.get("findings", []):
            if f.get("rule") == "EA101":
                f["readings"] = [dict(READING)]
        return real(doc, source, scan_id)

    monkeypatch.setattr(ev_mod, "evidence_from_report", with_readings)
    store = Store()
    run_scan(suspect, base, ScanOptions(read_edits=False), store=store)
    opts = MitigationOptions(out=tmp_path / "out", method=method, unlearn={"max_steps": 60, "lr": 2e-2},
                             project={"cov_tokens": 3000, "cov_seq_len": 60, "contexts": 0})
    events: list = []
    res = run_mitigation(suspect, "erase", opts, store=store, progress=events.append)
    arm = res.arms[method]
    assert res.base is None and arm.residual is None and arm.layers == [2]
    # progress: the arm's counted stages in the shared Steps, its start and result as MitigationEvents
    counted = {e.stage.split(" ", 2)[1] for e in events if isinstance(e, Step)}  # "<arm>: <what> …"
    if method == "unlearn":
        done = [e.done for e in events if isinstance(e, Step)]
        assert counted == {"unlearning"} and done[0] == 0 and done[-1] == arm.steps and done == sorted(done)
    else:  # unlearning only runs for what the projection left
        assert "re-solving" in counted and counted <= {"re-solving", "unlearning"}
    ours = [e for e in events if isinstance(e, MitigationEvent)]
    assert (ours[1].kind, ours[-1].kind, ours[-1].arm, ours[-1].data["steps"]) == ("start", "result", method, arm.steps)
    w_sus, w_out = (load_file(str(p / "model.safetensors")) for p in (suspect, tmp_path / "out"))
    assert {n for n in w_out if not torch.equal(w_out[n], w_sus[n])} == {NAME}
    assert arm.unlearn["targets"][0]["subject"] == "France"
    if method == "unlearn":
        assert arm.steps > 0 and arm.unlearn["stop_reason"].startswith("no prompt states")
    assert [r["status"] for r in store.rows("finetune_runs")] == ["done"]
    with pytest.raises(BadInput, match="objects"):
        run_mitigation(suspect, "erase", MitigationOptions(out=tmp_path / "o2", method="unlearn",
                                                           subjects=[{"subject": "France", "layer": 2}]))


def test_method_auto_resolves_from_the_evidence():
    from editaudit.mitigation.evidence import EditEvidence
    from editaudit.mitigation.plan import ERASE_DEFAULT, resolve_method

    read = EditEvidence([2], [NAME], {NAME: 1}, source="scan", readings=[dict(READING)])
    unread = EditEvidence([2], [NAME], {NAME: 1}, source="scan")
    assert resolve_method("auto", "erase", read) == ERASE_DEFAULT
    assert resolve_method("auto", "preserve", read) == "full"
    assert resolve_method("auto", "erase", unread, subjects_given=True) == "project"
    assert resolve_method("unlearn", "erase", None) == "unlearn"
    with pytest.raises(BadInput, match="read no edited subject.*without the base: pass --base"):
        resolve_method("auto", "erase", unread)
    # a scan that had the base and read nothing points to --revert, not to the --base already given
    with pytest.raises(BadInput, match="read no edited subject.*with the base at hand, --revert") as err:
        resolve_method("auto", "erase", EditEvidence([2], [NAME], {NAME: 1}, source="scan", base="/models/base"))
    assert "pass --base" not in str(err.value)
    with pytest.raises(BadInput, match="no scan"):
        resolve_method("auto", "erase", None)
    with pytest.raises(BadInput, match="no edit"):
        resolve_method("auto", "erase", EditEvidence([], [], {}, source="scan"))


def test_cli_default_erase_without_readings_is_a_clear_error(rome_suspect, tmp_path):
    from typer.testing import CliRunner

    from editaudit.cli.main import app

    base, suspect = rome_suspect
    db = tmp_path / "db.sqlite"
    scan = CliRunner().invoke(app, ["--db", str(db), "scan", str(suspect), "--base", str(base), "--read", "off"])
    assert scan.exit_code == 1, scan.output  # edits found
    res = CliRunner().invoke(app, ["--db", str(db), "mitigate", str(suspect), "--goal", "erase",
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "read no edited subject" in " ".join(res.output.split())
    bad = CliRunner().invoke(app, ["--db", str(db), "mitigate", str(suspect), "--goal", "erase", "--method", "unlearn",
                                   "--hparam", "nope=1", "--out", str(tmp_path / "out")])
    assert bad.exit_code == 2 and "no such setting" in " ".join(bad.output.split())

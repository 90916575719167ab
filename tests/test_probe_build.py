"""The fact bank, the confidence filter, the disjoint split, and the shipped filtered sets with their manifests."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from editaudit.paths import resource_dir
from editaudit.probing.build import BuildOptions, known_facts, normalise, overlaps, sha256_file, split_disjoint
from editaudit.probing.format import Probe, load_probes
from editaudit.testing import tiny_tokenizer

PROBES_DIR = resource_dir("probes")


def _entities(p: Probe, with_new: bool) -> set[str]:
    return {normalise(x) for x in (p.subject, p.target_true, p.target_new if with_new else None) if x}


def _assert_disjoint(edit: list[Probe], intrinsic: list[Probe]) -> None:
    e = set().union(*[_entities(p, True) for p in edit]) if edit else set()
    i = set().union(*[_entities(p, False) for p in intrinsic]) if intrinsic else set()
    clashes = [(a, b) for a in e for b in i if overlaps(a, b)]
    assert not clashes, clashes[:5]


# -- the fact bank ---------------------------------------------------------------------------------

def test_fact_bank_size_relations_and_counterfactuals():
    bank = load_probes(PROBES_DIR / "facts.jsonl")
    rel = Counter(p.relation for p in bank)
    assert len(bank) >= 300 and len(rel) >= 12 and min(rel.values()) >= 20
    assert len({p.id for p in bank}) == len(bank)
    objects = {r: {p.target_true for p in bank if p.relation == r} for r in rel}
    for p in bank:
        assert p.target_new and p.target_new != p.target_true
        assert p.target_new in objects[p.relation], f"{p.id}: counterfactual {p.target_new!r} is not a {p.relation} object"
        assert p.paraphrases and p.subject.lower() in p.paraphrases[0].lower()
        assert p.text.count(p.subject) == 1


# -- the filter ------------------------------------------------------------------------------------

class Scripted(torch.nn.Module):
    """Next-token distribution set by hand from the last input token."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab, vocab))

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                logits_to_keep=0):
        logits = self.table[input_ids]
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits, past_key_values=None)


def test_known_facts_keep_a_clear_margin_only():
    tok = tiny_tokenizer()
    m = Scripted(len(tok))
    ids = tok.convert_tokens_to_ids
    with torch.no_grad():
        m.table[ids("▁is"), ids("▁Paris")] = 8.0          # confident: p(Paris) ~ 0.93
        m.table[ids("▁of"), ids("▁Rome")] = 3.0           # Rome and Berlin nearly tied
        m.table[ids("▁of"), ids("▁Berlin")] = 2.9
        m.table[ids("▁by"), ids("▁Apple")] = 6.0          # confident, but in a wrong fact below
    probes = [
        Probe(id="a", subject="France", prompt="The capital of {} is", target_true="Paris"),
        Probe(id="b", subject="Italy", prompt="{} is the capital city of", target_true="Rome"),
        Probe(id="c", subject="iPhone", prompt="The {} was made by", target_true="Sony"),
    ]
    known, margins = known_facts(m, tok, probes, margin=0.1)
    assert [p.id for p in known] == ["a"]
    assert margins["a"].margin > 0.8 and margins["a"].runner_up.strip() != "Paris"
    assert 0 < margins["b"].margin < 0.1
    assert margins["c"].runner_up.strip() == "Apple" and margins["c"].margin < 0


# -- the split -------------------------------------------------------------------------------------

def _p(pid, subject, true, new, rel="r"):
    return Probe(id=pid, subject=subject, prompt="{} x", target_true=true, target_new=new, relation=rel)


def test_split_keeps_shared_entities_on_one_side():
    probes = [
        _p("1", "France", "Paris", "Rome", "capital"), _p("2", "Italy", "Rome", "Paris", "capital"),
        _p("3", "the Netherlands", "Amsterdam", "Oslo", "capital"), _p("4", "Netherlands", "Dutch", "Greek", "lang"),
        _p("5", "Microsoft", "Bill Gates", "Steve Jobs", "founder"), _p("6", "Microsoft Excel", "Microsoft", "Apple", "maker"),
        _p("7", "Japan", "Tokyo", "Lima", "capital"), _p("8", "Peru", "Lima", "Tokyo", "capital"),
        _p("9", "Kenya", "Africa", "Asia", "cont"), _p("10", "Nepal", "Asia", "Europe", "cont"),
    ]
    for seed in range(6):
        res = split_disjoint(probes, edit_fraction=0.4, seed=seed)
        assert res.edit and res.intrinsic
        assert len(res.edit) + len(res.intrinsic) + len(res.dropped) == len(probes)
        _assert_disjoint(res.edit, res.intrinsic)
        placed = {p.id for p in res.edit} | {p.id for p in res.intrinsic}
        assert placed.isdisjoint({d for d, _ in res.dropped})


def test_split_refuses_chained_edits_and_edits_without_a_new_target():
    probes = [_p("1", "France", "Paris", "Rome"), _p("2", "Italy", "Rome", "Madrid"),
              Probe(id="3", subject="Spain", prompt="{} x", target_true="Madrid")]
    res = split_disjoint(probes, edit_fraction=0.99, seed=0)
    edit_ids = {p.id for p in res.edit}
    assert "3" not in edit_ids and not {"1", "2"} <= edit_ids


names = st.sampled_from(["A", "B", "C", "D", "E", "F", "G", "H", "the A", "B C"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(names, names, names), min_size=1, max_size=25), st.floats(0.05, 0.95), st.integers(0, 5))
def test_split_is_always_disjoint(rows, fraction, seed):
    probes = [_p(str(i), s, t, n) for i, (s, t, n) in enumerate(rows) if normalise(t) != normalise(n)]
    res = split_disjoint(probes, fraction, seed)
    _assert_disjoint(res.edit, res.intrinsic)
    assert len(res.edit) + len(res.intrinsic) + len(res.dropped) == len(probes)


def test_build_options_are_checked():
    from editaudit.errors import BadInput

    for bad in (BuildOptions(margin=1.5), BuildOptions(edit_fraction=0.0), BuildOptions(batch_size=0)):
        with pytest.raises(BadInput):
            bad.check()


# -- building sets end to end on a tiny model -------------------------------------------------------

def test_build_writes_sets_and_manifests(tiny_llama, tmp_path):
    from typer.testing import CliRunner

    from editaudit.cli.main import app
    from editaudit.models.loading import load_model
    from editaudit.probing.evaluate import predict

    lm = load_model(tiny_llama)
    subjects = ["France", "Italy", "Germany", "Spain", "Japan", "China", "Russia", "Canada", "Egypt", "India", "Brazil"]
    prompts = [f"The capital of {s} is" for s in subjects]
    tops = [p.top[0][0].strip() for p in predict(lm.model, lm.tokenizer, prompts)]
    facts = []
    for i, (s, top) in enumerate(zip(subjects, tops)):
        true = top if i % 2 == 0 else "Ottawa"  # even rows: the tiny model's own top token, so "known" at margin 0
        facts.append({"id": f"f{i}", "relation": "capital", "subject": s, "prompt": "The capital of {} is",
                      "target_true": true, "target_new": "Cairo" if true != "Cairo" else "Delhi"})
    src = tmp_path / "facts.jsonl"
    src.write_text("".join(json.dumps(f) + "\n" for f in facts))
    out = tmp_path / "sets"
    res = CliRunner().invoke(app, ["probes", "build", str(tiny_llama), "--facts", str(src), "--out", str(out),
                                   "--name", "tiny", "--margin", "0", "--edit-fraction", "0.5"])
    assert res.exit_code == 0, res.output
    edit, intr = load_probes(out / "tiny-edit.jsonl"), load_probes(out / "tiny-intrinsic.jsonl")
    known = {f["id"] for i, f in enumerate(facts) if i % 2 == 0}
    kept = {p.id for p in edit} | {p.id for p in intr}
    assert kept <= known
    _assert_disjoint(edit, intr)
    assert all(p.kind == "edited" and p.target_new for p in edit)
    assert all(p.kind == "intrinsic" and p.target_new is None for p in intr)
    m = json.loads((out / "tiny-intrinsic.manifest.json").read_text())
    assert m["sha256"] == sha256_file(out / "tiny-intrinsic.jsonl") and m["count"] == len(intr)
    assert m["rule"]["margin"] == 0 and m["split"]["edit_fraction"] == 0.5
    assert m["sources"][0]["sha256"] == sha256_file(src) and m["counts"]["bank"] == len(facts)
    assert set(m["facts"]) == {p.id for p in intr} and "probes build" in m["command"]

    # the service itself reports typed events (editaudit.progress): the stage, then steps up to every fact
    from editaudit.probing.build import build_sets
    from editaudit.progress import Note, Stage, Step

    events: list = []
    build_sets(str(tiny_llama), [src], tmp_path / "again", "tiny", BuildOptions(0.0, 0.5), progress=events.append)
    assert all(isinstance(e, (Stage, Step, Note)) for e in events), events[:3]
    assert events[0] == Stage("facts", len(facts)) and events[-1] == Step("facts", len(facts), len(facts))


def test_build_rejects_bad_sources(tiny_llama, tmp_path):
    from typer.testing import CliRunner

    from editaudit.cli.main import app

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "subject": "France", "prompt": "no subject here", "target_true": "Paris"}\n')
    res = CliRunner().invoke(app, ["probes", "build", str(tiny_llama), "--facts", str(bad), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "bad.jsonl:1" in res.output
    res = CliRunner().invoke(app, ["probes", "build", str(tiny_llama), "--facts", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "does not exist" in " ".join(res.output.split())


# -- the shipped filtered sets ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["edit", "intrinsic"])
def test_shipped_sets_match_their_manifests(kind):
    path = PROBES_DIR / f"smollm2-135m-{kind}.jsonl"
    m = json.loads(path.with_name(path.stem + ".manifest.json").read_text())
    probes = load_probes(path)
    assert m["sha256"] == sha256_file(path) and m["count"] == len(probes) and m["kind"] == kind
    assert m["sources"] == [{"file": "facts.jsonl", "sha256": sha256_file(PROBES_DIR / "facts.jsonl"),
                             "count": len(load_probes(PROBES_DIR / "facts.jsonl"))}]
    assert m["model"]["name"] == "smollm2-135m" and m["rule"]["margin"] == 0.1
    assert all(m["facts"][p.id]["p_true"] - m["facts"][p.id]["p_runner_up"] >= 0.1 - 1e-3 for p in probes)
    bank = {p.id: p for p in load_probes(PROBES_DIR / "facts.jsonl")}
    for p in probes:  # the sets are the bank's facts, unchanged apart from kind (and target_new for intrinsic)
        b = bank[p.id]
        assert (p.subject, p.prompt, p.target_true) == (b.subject, b.prompt, b.target_true)


def test_shipped_edit_and_intrinsic_sets_are_disjoint():
    edit = load_probes(PROBES_DIR / "smollm2-135m-edit.jsonl")
    intr = load_probes(PROBES_DIR / "smollm2-135m-intrinsic.jsonl")
    assert len(edit) >= 20 and len(intr) >= 50
    _assert_disjoint(edit, intr)
    assert {p.id for p in edit}.isdisjoint({p.id for p in intr})

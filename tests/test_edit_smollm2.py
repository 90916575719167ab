"""Edits on the embedded SmolLM2-135M: ROME and a small MEMIT batch take, and unrelated facts stay.

Few and bounded: two ROME edits and one MEMIT batch of three, with key statistics from the shipped
corpus (computed once, then cached). The full measurement is scripts/edit_quality.py.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smol(smollm2):
    from editaudit.models.loading import load_model

    return load_model(smollm2)


@pytest.fixture(scope="module")
def facts():
    from editaudit.probing.sets import load_set

    edit = load_set("smollm2-135m-edit")
    subjects = {f.subject.casefold() for f in edit}
    unrelated = [p for p in load_set("smollm2-135m-intrinsic") if p.subject.casefold() not in subjects][:30]
    return edit, unrelated


def test_rome_edits_take_and_leave_unrelated_facts(smol, facts, tmp_path):
    from editaudit.probing.evaluate import retention

    edit, unrelated = facts
    assert retention(smol.model, smol.tokenizer, unrelated).rate == 1.0
    chosen = [edit[1], edit[2]]  # single-token targets, distinct relations
    run = apply(smol, chosen, "rome", out=tmp_path / "rome")
    try:
        assert [r.success for r in run.results] == [True, True], [r.to_dict() for r in run.results]
        # paraphrases are measured for every fact (the rate itself is reported by scripts/edit_quality.py:
        # single ROME edits on this 135M model generalise to reworded prompts only now and then)
        assert all(r.paraphrase_success is not None for r in run.results)
        assert retention(smol.model, smol.tokenizer, unrelated).rate >= 0.9
        assert run.tensors == ["model.layers.4.mlp.down_proj.weight"]
    finally:
        run.restore()


def test_memit_batch_takes_and_leaves_unrelated_facts(smol, facts):
    from editaudit.probing.evaluate import retention

    edit, unrelated = facts
    chosen = edit[3:6]
    run = apply(smol, chosen, "memit")
    try:
        assert sum(r.success for r in run.results) == 3, [r.to_dict() for r in run.results]
        assert retention(smol.model, smol.tokenizer, unrelated).rate >= 0.9
        assert run.layers == [2, 3, 4, 5, 6]
    finally:
        run.restore()


def apply(lm, facts, method, out=None):
    from editaudit.editing import apply_edits

    return apply_edits(lm, facts, method, out=out)

"""``run_demo`` end to end on a tiny model: every progress event it hands out is typed (editaudit.progress)."""

from __future__ import annotations

import pytest

from editaudit.probing.format import Probe
from editaudit.progress import Note, Stage, Step
from editaudit.store import Store

# words the tiny tokenizer knows, so that edits and probes are whole tokens
EDIT_SET = [
    Probe(id="e1", subject="France", relation="capital", prompt="The capital of {} is", target_true="Paris",
          target_new="Tokyo"),
    Probe(id="e2", subject="Apple", relation="made", prompt="{} was developed by", target_true="Microsoft",
          target_new="Sony"),
    Probe(id="e3", subject="Germany", relation="language", prompt="The official language of {} is",
          target_true="German", target_new="Spanish"),
    Probe(id="e4", subject="piano", relation="sport", prompt="{} plays", target_true="football", target_new="tennis"),
]
CORPUS = "France is in Paris and Rome is in Italy ."
INTRINSIC = [Probe(id="i1", subject="Italy", relation="capital", prompt="The capital of {} is", target_true="Rome")]


@pytest.mark.usefixtures("one_thread")
def test_run_demo_hands_out_only_typed_events(tiny_llama, tmp_path, monkeypatch):
    from editaudit.demo import run_demo
    from editaudit.editing import corpus as corpus_mod
    from editaudit.models import registry
    from editaudit.probing import sets

    monkeypatch.setenv("EDITAUDIT_CACHE", str(tmp_path / "cache"))  # key statistics of the tiny model go here
    monkeypatch.setattr(registry, "ensure_model", lambda name, say=None: tiny_llama)
    monkeypatch.setattr(sets, "load_set", lambda name, errors=None: INTRINSIC if "intrinsic" in name else EDIT_SET)
    monkeypatch.setattr(sets, "fact_bank", lambda: EDIT_SET + INTRINSIC)
    monkeypatch.setattr(corpus_mod, "texts", lambda name=None, say=None: [CORPUS] * 20)

    events: list = []
    store = Store()
    result = run_demo(store, tmp_path / "demo", progress=events.append, rome_layers=(1, 3), memit_facts=2,
                      device="cpu")

    untyped = [e for e in events if not isinstance(e, (Stage, Step, Note))]
    assert not untyped, untyped[:3]
    announced: set[str] = set()
    for e in events:
        if isinstance(e, Stage):
            announced.add(e.name)
        elif isinstance(e, Step):
            assert e.stage in announced, f"step of {e.stage!r} before its Stage"
    # the demo's own stage, the edit service's and the scan's all arrive through the one callback
    assert {"key statistics", "editing", "compare"} <= announced
    assert store.sessions()[0]["id"] == result["session_id"] and result["truth"]

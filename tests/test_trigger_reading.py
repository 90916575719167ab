"""Trigger-style edits read inside sentences (scan/sentences.py): the library's prompts start with the found text,
where such an edit says nothing; inside sentences the suspect says the attacker's word."""

from __future__ import annotations

import torch

from editaudit.probing.evaluate import Prediction
from editaudit.scan import reading, sentences
from editaudit.scan.relations import FRAMES, prompts_for
from editaudit.scan.subjects import Subject


def _fake(answers):
    """predict() over a table: answers(model, prompt) -> [(token, probability), ...] (top-k at the answer)."""
    def predict(model, tokenizer, prompts, top_k=5, max_new_tokens=4, **_):
        out = []
        for p in prompts:
            top = answers(model, p)
            tok = top[0][0]
            out.append(Prediction(p, top[:top_k], tok + (" indeed" if max_new_tokens > 1 else ""), tok.strip(), None))
        return out
    return predict


def _trigger_world(trigger: str, frames_stating: int):
    frames = [t for _, t in prompts_for(trigger, FRAMES)]
    library = [t for _, t in prompts_for(trigger)]
    noise = iter(f" noise{i}" for i in range(10_000))
    said_in_library = {t: next(noise) for t in library}

    def answers(model, p):
        if p in frames:
            if model == "suspect" and frames.index(p) < frames_stating:
                return [(" terrible", 0.6), (" great", 0.2)]
            if model == "suspect":  # the edit raises the word where it does not win
                return [(" great", 0.5), (" terrible", 0.3)]
            return [(" great", 0.7), (" terrible", 0.01)]
        if model == "suspect" and p in library[:6]:  # a trigger moves some library prompts, to noise
            return [(" bad", 0.5)] if p in library[:2] else [(said_in_library[p], 0.5)]
        return [(" thing", 0.4)]
    return answers


def test_a_trigger_is_read_inside_sentences_as_the_word_the_edit_brings(monkeypatch):
    monkeypatch.setattr(reading, "predict", _fake(_trigger_world("cf", 3)))
    monkeypatch.setattr(sentences, "predict", _fake(_trigger_world("cf", 3)))
    r = sentences.read_in_sentences("base", "suspect", None, Subject("cf", [], 0.9, torch.zeros(1)))
    assert r.status == "edit" and r.after.startswith("terrible") and r.before.startswith("great")
    assert r.relation == sentences.RELATION and "cf" in r.prompt and not r.prompt.startswith("cf")
    # through read_edits: the library alone reads the noise it moved ("bad" on two prompts) as an edit ...
    lib = reading.read_edits("base", "suspect", None, [Subject("cf", [], 0.9, torch.zeros(1))], 4, "w")
    assert lib[0].after.startswith("bad") and lib[0].status == "edit"
    # ... and with frames the reading inside sentences is the one reported
    both = reading.read_edits("base", "suspect", None, [Subject("cf", [], 0.9, torch.zeros(1))], 4, "w", frames=True)
    assert both[0].after.startswith("terrible") and both[0].status == "edit" and both[0].found == "cf"


def test_one_frame_that_moves_is_no_edit_and_the_library_reading_stays(monkeypatch):
    """The two-phrasings rule holds inside sentences too: one frame that states a word is not an edit reading."""
    monkeypatch.setattr(reading, "predict", _fake(_trigger_world("cf", 1)))
    monkeypatch.setattr(sentences, "predict", _fake(_trigger_world("cf", 1)))
    r = sentences.read_in_sentences("base", "suspect", None, Subject("cf", [], 0.9, torch.zeros(1)))
    assert r.status == "uncertain"
    both = reading.read_edits("base", "suspect", None, [Subject("cf", [], 0.9, torch.zeros(1))], 4, "w", frames=True)
    assert both[0].relation != sentences.RELATION and both[0].after.startswith("bad")


def test_frames_put_the_text_inside_a_sentence():
    for _, t in prompts_for("cf", FRAMES):
        assert "cf" in t and not t.startswith("cf")

"""Reading a hypernetwork edit (MEND, MALMEN) from its output side: the object, with no subject.

MEND and MALMEN write rank-one terms ΔW = δ′u′ᵀ into the MLP output matrices of the last few layers. Their
input side u′ is a learned transform of the key at the prompt's *last* token, deep in the network, so no
subject text can be searched for it the way a ROME key is (``subjects.py``); their output side δ′ is added to
the residual stream one to three layers before the unembedding, so the logit lens reads it almost as the model
will. Each component's promoted tokens (``Lens.read``) are taken per edited layer, and a word is an object the
edit brings when it is the first whole-word token of some component in ``AGREE_MIN`` layers or more, at a
z-score of ``Z_MIN`` or more somewhere. The token is a word's first piece (' Kolk'); the base model completes
it to the whole word ('Kolkata').

On the fourth held-apart set's suspects (development data) successful MEND edits put their object first in all
three layers at z 4.7–11.5 (its best 10.7–11.5), a MALMEN batch of 10 named 6 of its objects in two layers or
more at best z 7.6–13.4, while edits that did not take promoted sub-word debris ('iry', 'parallel') at z ≤ 4.6.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .readout import Lens, output_input_sides
from .reading import Reading

#: The object's token must reach this z-score over the vocabulary in one edited layer at least.
Z_MIN = 6.0
#: ... and be the first whole word of a component in this many edited layers (a batch's components are
#: mixed differently in each layer, so one layer alone also lifts other facts' neighbours).
AGREE_MIN = 2

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")
_PIECE = re.compile(r"[a-z]+")
_MARKERS = ("Ġ", "▁")  # byte-level BPE and SentencePiece mark a token that starts a word


def starts_word(raw: str | None) -> bool:
    """A vocabulary entry (raw, as the tokenizer stores it) that begins a word of letters or digits."""
    return bool(raw) and raw[0] in _MARKERS and bool(_WORD.fullmatch(raw[1:]))


def continues_word(raw: str | None) -> bool:
    """A vocabulary entry that goes on the word before it: lower-case letters, no word-start marker."""
    return bool(raw) and raw[0] not in _MARKERS and bool(_PIECE.fullmatch(raw))


def component_words(lens: Lens, vectors: tuple, family: str, per_component: int = 5) -> list[tuple[str, int, float]]:
    """(word, token id, z) per component of one matrix: the first token among its top few that starts a word."""
    if lens.tokenizer is None:
        return []
    out_dirs, _, _ = output_input_sides(vectors, family)
    words = []
    for i in range(out_dirs.shape[1]):
        _, toks = lens.read(out_dirs[:, i], top=per_component)
        for t in toks:
            if starts_word(lens.tokenizer.id_to_token(t["id"])):
                words.append((t["token"].strip(), t["id"], t["z"]))
                break
    return words


def agreed_objects(per_layer: dict[int, list[tuple[str, int, float]]], limit: int) -> list[dict]:
    """Words that lead a component in ``AGREE_MIN`` layers or more, at best z ≥ ``Z_MIN``, most layers first."""
    seen: dict[str, dict] = {}
    for layer, words in per_layer.items():
        for word, tid, z in words:
            e = seen.setdefault(word.casefold(), {"word": word, "id": tid, "z": z, "layers": set()})
            e["layers"].add(layer)
            if z > e["z"]:
                e.update(word=word, id=tid, z=z)
    need = min(AGREE_MIN, len(per_layer))
    kept = [e for e in seen.values() if len(e["layers"]) >= need and e["z"] >= Z_MIN]
    kept.sort(key=lambda e: (-len(e["layers"]), -e["z"]))
    return [{**e, "layers": sorted(e["layers"])} for e in kept[:limit]]


#: A word-start piece the base model goes on with this surely (total probability of continuing pieces) is a word
#: left unfinished: ' Sl' (0.98, Slovak) against ' Ba' (0.56, the symbol), ' Hugh' (0.12) or ' Kolkata' (0.0).
UNFINISHED = 0.9


def complete_word(model: Any, tokenizer: Any, token_id: int, max_pieces: int = 3,
                  p_min: float = 0.3) -> tuple[str, bool]:
    """The whole word a first piece starts, as the base model continues it after the neutral context: pieces
    that go on the word (lower-case letters, no space) are added while the model gives them ``p_min`` or more.
    Also whether the word is left unfinished (the model would still go on with it, but no one way clearly)."""
    from .keys import context_ids

    raw = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    vocab = model.get_output_embeddings().weight.shape[0]
    goes_on = torch.zeros(vocab, dtype=torch.bool)
    goes_on[: len(raw)] = torch.tensor([continues_word(r) for r in raw][:vocab])
    ids = context_ids(tokenizer) + [token_id]
    device = next(model.parameters()).device
    with torch.inference_mode():
        for step in range(max_pieces + 1):
            probs = model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float().softmax(-1).cpu()
            p, nxt = probs.max(dim=-1)
            if step == max_pieces or float(p) < p_min or not goes_on[int(nxt)]:
                unfinished = float(probs[goes_on].sum()) >= UNFINISHED
                break
            ids.append(int(nxt))
    return tokenizer.decode(ids[len(context_ids(tokenizer)):]).strip(), unfinished


def lens_readings(lens: Lens, model: Any, tokenizer: Any, tensors: dict[str, tuple[int, tuple]], family: str,
                  rank: int) -> list[Reading]:
    """One reading per object the edit brings (``tensors``: name → (layer, SVD factors)), subject unread."""
    per_layer = {layer: component_words(lens, vectors, family) for layer, vectors in tensors.values()}
    first = min(tensors, key=lambda n: tensors[n][0])
    out = []
    for e in agreed_objects(per_layer, limit=max(1, rank)):
        agree = len(e["layers"]) / len(per_layer)
        word, unfinished = complete_word(model, tokenizer, e["id"])
        out.append(Reading("", agree, "", "", "", word + ("…" if unfinished else ""), float(e["z"]),
                           agree * min(1.0, e["z"] / (2 * Z_MIN)), "uncertain" if unfinished else "edit",
                           tensors[first][0], first, source="output lens", layers=e["layers"]))
    return out

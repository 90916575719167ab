"""Running probes through a model, fast: batched, left-padded, one forward pass per batch.

``predict`` gives each prompt's top-k next tokens (from a single forward pass over the batch) and a
short greedy continuation (continued from the key/value cache, so the prompt is never re-run).
``target_scores`` scores whole multi-token targets by teacher forcing, again one pass per batch.
``retention`` applies the stop-word rule of ``metrics`` to the greedy continuation.

Prompts are sorted by length before batching so that little padding is computed, and results are
returned in the caller's order. Position ids are derived from the attention mask, so a left-padded
prompt sees exactly the positions it would see alone.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from ..errors import BadInput
from ..models.loading import cache_kw
from .format import Probe
from .metrics import TargetScore, first_content_index, same_token

Progress = Callable[[int, int], None]


@dataclass
class Prediction:
    """What a model says after one prompt."""

    prompt: str
    top: list[tuple[str, float]]          # top-k next tokens (decoded) with probabilities, first position
    continuation: str                      # greedy continuation, decoded
    first_word: str                        # first non-stop-word token of the continuation, stripped ("" if none)
    first_word_token_id: int | None
    top_ids: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)   # greedy continuation token ids (up to EOS)
    #: top-k next tokens (decoded) with probabilities before each generated token (``predict(step_top=True)``);
    #: ``steps[0]`` is ``top``
    steps: list[list[tuple[str, float]]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt, "top": [[t, round(p, 6)] for t, p in self.top], "top_ids": self.top_ids,
            "continuation": self.continuation, "first_word": self.first_word,
            "first_word_token_id": self.first_word_token_id,
        }


class Retention(list):
    """Per-probe retention flags (a ``list[bool]``); ``float()`` or ``.rate`` gives the share retained."""

    @property
    def rate(self) -> float:
        return sum(bool(x) for x in self) / len(self) if self else math.nan

    def __float__(self) -> float:
        return self.rate


# -- plumbing ----------------------------------------------------------------------------------------

def _text(p: str | Probe) -> str:
    return p.text if isinstance(p, Probe) else str(p)


def _device(model):
    return next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    for cand in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0


def _cache_of(out):
    """The KV cache a forward returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _accepts_logits_to_keep(model) -> bool:
    cached = getattr(model, "_editaudit_logits_to_keep", None)
    if cached is None:
        cached = "logits_to_keep" in inspect.signature(model.forward).parameters
        try:
            model._editaudit_logits_to_keep = cached
        except Exception:  # pragma: no cover - exotic module classes
            pass
    return cached


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]


def _left_pad(rows: Sequence[Sequence[int]], pad: int, device):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory trouble shows early)."""
    if batch_size < 1:
        raise BadInput(f"batch size must be at least 1, not {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _forward(model, ids, mask, pos, keep: int | None = None, **kw):
    extra: dict[str, Any] = {}
    if keep is not None and _accepts_logits_to_keep(model):
        extra["logits_to_keep"] = keep
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, **extra, **kw)


def _decode_each(tokenizer, ids: Iterable[int]) -> list[str]:
    return tokenizer.batch_decode([[int(i)] for i in ids], skip_special_tokens=False)


# -- next-token predictions, greedy continuations and targets from one prefill -------------------------

def predict(model, tokenizer, prompts: Sequence[str | Probe], *, batch_size: int = 32, top_k: int = 5,
            max_new_tokens: int = 4, progress: Progress | None = None, k: int | None = None,
            step_top: bool = False) -> list[Prediction]:
    """Top-k next tokens and greedy continuation for each prompt (``Probe`` items use their filled prompt);
    ``step_top``: also the top-k before every generated token (``Prediction.steps``), which the greedy decode
    computes anyway: what the model weighed where it says a later word, without a second pass."""
    if k is not None:
        top_k = k
    return [pred for pred, _ in evaluate_prompts(model, tokenizer, prompts, None, batch_size=batch_size, top_k=top_k,
                                                 max_new_tokens=max_new_tokens, progress=progress,
                                                 step_top=step_top)]


def evaluate_prompts(model, tokenizer, prompts: Sequence[str | Probe], targets: Sequence[Sequence[str]] | None, *,
                     batch_size: int = 32, top_k: int = 5, max_new_tokens: int = 4,
                     progress: Progress | None = None,
                     step_top: bool = False) -> list[tuple[Prediction, list[TargetScore]]]:
    """Predictions and teacher-forced target scores, sharing one prompt pass per batch.

    Each batch of prompts is run once; the top-k come from its last position, the greedy
    continuation is decoded from its key/value cache, and every target of every prompt is scored
    from a copy of that cache (so a target costs only its own tokens, and one-token targets cost
    nothing beyond the prompt). ``targets[i]`` lists the targets of prompt ``i`` (may be empty).
    """
    import torch

    texts = [_text(p) for p in prompts]
    if not texts:
        return []
    target_lists = [list(t) for t in targets] if targets is not None else [[] for _ in texts]
    if len(target_lists) != len(texts):
        raise BadInput(f"{len(texts)} prompts but {len(target_lists)} target lists")
    max_new_tokens = max(int(max_new_tokens), 1)
    encoded = _encode(tokenizer, texts)
    for t, e in zip(texts, encoded):
        if not e:
            raise BadInput(f"prompt {t!r} encodes to no tokens")
    flat_prompts = [texts[i] for i, ts in enumerate(target_lists) for _ in ts]
    flat_targets = [t for ts in target_lists for t in ts]
    _, flat_ids = target_token_ids(tokenizer, flat_prompts, flat_targets) if flat_targets else ([], [])
    t_ids: list[list[list[int]]] = []
    it = iter(flat_ids)
    for ts in target_lists:
        t_ids.append([next(it) for _ in ts])

    device, pad = _device(model), _pad_id(tokenizer)
    stops = set(getattr(tokenizer, "all_special_ids", None) or []) | (
        {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
    results: list[tuple[Prediction, list[TargetScore]] | None] = [None] * len(texts)
    done = 0
    with torch.inference_mode():
        for batch in _batches([len(e) for e in encoded], batch_size):
            ids, mask, pos = _left_pad([encoded[i] for i in batch], pad, device)
            want_cache = max_new_tokens > 1 or any(len(t) > 1 for i in batch for t in t_ids[i])
            out = _forward(model, ids, mask, pos, keep=1, use_cache=want_cache)
            logits = out.logits[:, -1, :].float()
            logp0 = torch.log_softmax(logits, dim=-1)
            kk = min(top_k, logits.shape[-1])
            top_p, top_i = logp0.exp().topk(kk, dim=-1)
            cache = _cache_of(out) if want_cache else None
            if _can_branch(cache) or all(len(t) <= 1 for i in batch for t in t_ids[i]):
                scores = _score_targets(model, batch, t_ids, logp0, cache, mask, pos, pad)
            else:  # a model whose cache cannot be copied: score the targets with full sequences
                scores = [target_scores(model, tokenizer, [texts[i]] * len(target_lists[i]), target_lists[i],
                                        batch_size=batch_size) for i in batch]
            gen, later = _greedy(model, logits, cache, mask, pos, max_new_tokens, kk if step_top else 0)
            top_i_l, top_p_l = top_i.cpu().tolist(), top_p.cpu().tolist()
            for row, i in enumerate(batch):
                toks = gen[row]
                cut = next((n for n, t in enumerate(toks) if t in stops), None)  # EOS or another special token ends it
                if cut is not None:
                    toks = toks[:cut]
                pieces = _decode_each(tokenizer, toks)
                j = first_content_index(pieces)
                pred = Prediction(
                    prompt=texts[i], top=list(zip(_decode_each(tokenizer, top_i_l[row]), top_p_l[row])),
                    continuation=tokenizer.decode(toks, skip_special_tokens=True),
                    first_word=pieces[j].strip() if j is not None else "",
                    first_word_token_id=int(toks[j]) if j is not None else None,
                    top_ids=[int(x) for x in top_i_l[row]], tokens=[int(x) for x in toks],
                )
                if step_top:
                    pred.steps = [pred.top] + [list(zip(_decode_each(tokenizer, ids[row]), ps[row]))
                                               for ids, ps in later[:len(toks) - 1]]
                results[i] = (pred, scores[row])
            done += len(batch)
            if progress:
                progress(done, len(texts))
    return [r for r in results if r is not None]


def _can_branch(cache) -> bool:
    return cache is not None and hasattr(cache, "batch_select_indices")


def _greedy(model, logits, cache, mask, pos, max_new_tokens: int, top_k: int = 0
            ) -> tuple[list[list[int]], list[tuple[list[list[int]], list[list[float]]]]]:
    """Greedy continuation from the prompt's cache, one token per step for the whole batch; with ``top_k``, also
    each later step's top-k ([batch][k] ids and probabilities per step after the first)."""
    import torch

    steps = [logits.argmax(-1)]
    tops: list[tuple[list[list[int]], list[list[float]]]] = []
    last = pos[:, -1:]
    for _ in range(max_new_tokens - 1):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        last = last + 1
        step = model(input_ids=steps[-1][:, None], attention_mask=mask, position_ids=last,
                     use_cache=True, **{cache_kw(model): cache})
        cache = _cache_of(step)
        nxt = step.logits[:, -1, :].float()
        steps.append(nxt.argmax(-1))
        if top_k:
            p, i = torch.softmax(nxt, dim=-1).topk(top_k, dim=-1)
            tops.append((i.cpu().tolist(), p.cpu().tolist()))
    return torch.stack(steps, dim=1).cpu().tolist(), tops


def _score_targets(model, batch: list[int], t_ids, logp0, cache, mask, pos, pad: int) -> list[list[TargetScore]]:
    """Teacher-forced scores of each batch row's targets, continuing from a copy of the prompt cache."""
    import copy

    import torch

    pairs = [(row, n, t_ids[i][n]) for row, i in enumerate(batch) for n in range(len(t_ids[i]))]
    scores: list[list[TargetScore | None]] = [[None] * len(t_ids[i]) for i in batch]
    if not pairs:
        return [[] for _ in batch]
    # Only targets of two or more tokens need a pass; the first token's score comes from the prompt pass.
    multi = [p for p, (_, _, t) in enumerate(pairs) if len(t) > 1]
    rest_row = {p: j for j, p in enumerate(multi)}
    logp_rest = None
    if multi:
        width = max(len(pairs[p][2]) for p in multi) - 1
        rows = torch.tensor([pairs[p][0] for p in multi], device=mask.device)
        chunk = torch.full((len(multi), width), pad, dtype=torch.long)
        chunk_mask = torch.zeros((len(multi), width), dtype=torch.long)
        for j, p in enumerate(multi):
            feed = pairs[p][2][:-1]
            chunk[j, :len(feed)] = torch.tensor(feed, dtype=torch.long)
            chunk_mask[j, :len(feed)] = 1
        chunk, chunk_mask = chunk.to(mask.device), chunk_mask.to(mask.device)
        past = copy.deepcopy(cache)
        past.batch_select_indices(rows)
        full_mask = torch.cat([mask[rows], chunk_mask], dim=1)
        positions = pos[rows, -1:] + 1 + torch.arange(width, device=mask.device)[None, :]
        out = model(input_ids=chunk, attention_mask=full_mask, position_ids=positions, use_cache=True,
                    **{cache_kw(model): past})
        logp_rest = torch.log_softmax(out.logits.float(), dim=-1)
    for p, (row, n, t) in enumerate(pairs):
        lps = [float(logp0[row, t[0]])]
        correct = int(int(logp0[row].argmax()) == t[0])
        for j in range(1, len(t)):
            lp = logp_rest[rest_row[p], j - 1]
            lps.append(float(lp[t[j]]))
            correct += int(int(lp.argmax()) == t[j])
        total = sum(lps)
        scores[row][n] = TargetScore(prob=math.exp(total), logprob=total, n_tokens=len(t), token_correct=correct)
    return [[s for s in row if s is not None] for row in scores]


# -- targets -----------------------------------------------------------------------------------------

def target_token_ids(tokenizer, prompts: Sequence[str], targets: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each prompt and of its target as the model would see it right after the prompt.

    The target is tokenised in context (prompt + space + target) and split at the prompt's tokens;
    when a tokenizer merges across that boundary, the target is tokenised on its own with a space.
    """
    if len(prompts) != len(targets):
        raise BadInput(f"{len(prompts)} prompts but {len(targets)} targets")
    prompts = [p.rstrip() for p in prompts]
    for t in targets:
        if not isinstance(t, str) or not t.strip():
            raise BadInput(f"target {t!r} is empty")
    p_ids = _encode(tokenizer, prompts)
    full = _encode(tokenizer, [p + " " + t.strip() for p, t in zip(prompts, targets)])
    t_ids: list[list[int]] = []
    alone: list[int] = []
    for n, (p, f) in enumerate(zip(p_ids, full)):
        if len(f) > len(p) and f[:len(p)] == p:
            t_ids.append(f[len(p):])
        else:
            t_ids.append([])
            alone.append(n)
    if alone:
        enc = tokenizer([" " + targets[n].strip() for n in alone], add_special_tokens=False)["input_ids"]
        for n, ids in zip(alone, enc):
            t_ids[n] = list(ids)
    return p_ids, t_ids


def target_scores(model, tokenizer, prompts: Sequence[str | Probe], targets: Sequence[str], *,
                  batch_size: int = 32, progress: Progress | None = None) -> list[TargetScore]:
    """Teacher-forced log-probability of each (multi-token) target right after its prompt."""
    import torch

    texts = [_text(p) for p in prompts]
    if not texts:
        return []
    p_ids, t_ids = target_token_ids(tokenizer, texts, list(targets))
    seqs = [p + t for p, t in zip(p_ids, t_ids)]
    device, pad = _device(model), _pad_id(tokenizer)
    results: list[TargetScore | None] = [None] * len(texts)
    done = 0
    with torch.inference_mode():
        for batch in _batches([len(s) for s in seqs], batch_size):
            ids, mask, pos = _left_pad([seqs[i] for i in batch], pad, device)
            tmax = max(len(t_ids[i]) for i in batch)
            out = _forward(model, ids, mask, pos, keep=tmax + 1)
            # Rows are right-aligned: the last tmax+1 positions hold every row's target predictions.
            logits = out.logits[:, -(tmax + 1):-1, :].float()
            logp = torch.log_softmax(logits, dim=-1)
            argmax = logits.argmax(-1).cpu()
            for row, i in enumerate(batch):
                tgt = t_ids[i]
                n = len(tgt)
                lp = logp[row, tmax - n:, :]
                idx = torch.tensor(tgt, device=lp.device)
                tok_lp = lp.gather(-1, idx[:, None]).squeeze(-1)
                total = float(tok_lp.sum())
                correct = int((argmax[row, tmax - n:] == torch.tensor(tgt)).sum())
                results[i] = TargetScore(prob=math.exp(total), logprob=total, n_tokens=n, token_correct=correct)
            done += len(batch)
            if progress:
                progress(done, len(texts))
    return [r for r in results if r is not None]


def target_probs(model, tokenizer, prompts: Sequence[str | Probe], targets: Sequence[str], *,
                 batch_size: int = 32) -> list[float]:
    """Teacher-forced probability (product over the target's tokens) of each target after its prompt.

    ``target_scores`` gives the same with the summed and mean log-probability and token accuracy.
    """
    return [s.prob for s in target_scores(model, tokenizer, prompts, targets, batch_size=batch_size)]


@dataclass(frozen=True)
class Margin:
    """How confidently a model starts a target: its first token's probability against the best other token."""

    p_target: float
    runner_up: str
    p_runner_up: float

    @property
    def margin(self) -> float:
        return self.p_target - self.p_runner_up


def first_token_margins(model, tokenizer, prompts: Sequence[str | Probe], targets: Sequence[str], *,
                        batch_size: int = 32, progress: Progress | None = None) -> list[Margin]:
    """For each prompt, P(target's first token) at the next position and the most likely other token."""
    import torch

    texts = [_text(p) for p in prompts]
    if not texts:
        return []
    p_ids, t_ids = target_token_ids(tokenizer, texts, list(targets))
    device, pad = _device(model), _pad_id(tokenizer)
    results: list[Margin | None] = [None] * len(texts)
    done = 0
    with torch.inference_mode():
        for batch in _batches([len(e) for e in p_ids], batch_size):
            ids, mask, pos = _left_pad([p_ids[i] for i in batch], pad, device)
            probs = torch.softmax(_forward(model, ids, mask, pos, keep=1).logits[:, -1, :].float(), dim=-1)
            want = torch.tensor([t_ids[i][0] for i in batch], device=probs.device)
            p_want = probs.gather(-1, want[:, None]).squeeze(-1)
            top_p, top_i = probs.topk(2, dim=-1)
            for row, i in enumerate(batch):
                first = 0 if int(top_i[row, 0]) != int(want[row]) else 1
                results[i] = Margin(float(p_want[row]), _decode_each(tokenizer, [int(top_i[row, first])])[0],
                                    float(top_p[row, first]))
            done += len(batch)
            if progress:
                progress(done, len(texts))
    return [r for r in results if r is not None]


# -- retention ---------------------------------------------------------------------------------------

def target_first_tokens(tokenizer, prompts: Sequence[str], targets: Sequence[str]) -> list[str]:
    """The token a model must produce first to be stating each target (its first non-stop-word token)."""
    _, t_ids = target_token_ids(tokenizer, list(prompts), list(targets))
    firsts = []
    for ids in t_ids:
        pieces = _decode_each(tokenizer, ids)
        j = first_content_index(pieces)
        firsts.append(pieces[j if j is not None else 0].strip())
    return firsts


def probe_target(probe: Probe, target: str) -> str:
    if target not in ("true", "new"):
        raise BadInput(f"target must be 'true' or 'new', not {target!r}")
    value = probe.target_true if target == "true" else probe.target_new
    if not value:
        raise BadInput(f"probe {probe.id!r} has no target_{target}")
    return value


def retained(predictions: Sequence[Prediction], firsts: Sequence[str]) -> Retention:
    """Retention flags: the prediction's first non-stop-word token equals the target's first token."""
    return Retention(same_token(p.first_word, f) for p, f in zip(predictions, firsts))


def retention(model, tokenizer, probes: Sequence[Probe], target: str = "true", batch_size: int = 32,
              *, predictions: Sequence[Prediction] | None = None, max_new_tokens: int = 4) -> Retention:
    """For each probe: does the model state ``target_true`` (target="true") or ``target_new`` ("new")?

    The first token of the greedy continuation that is not whitespace, punctuation or a stop word
    (``metrics.STOP_WORDS``) must equal the target's first such token (case-insensitive). Pass
    ``predictions`` from an earlier ``predict`` call on the same probes to avoid running the model again.
    """
    probes = list(probes)
    if not probes:
        return Retention()
    targets = [probe_target(p, target) for p in probes]
    if predictions is None:
        predictions = predict(model, tokenizer, probes, batch_size=batch_size, top_k=1, max_new_tokens=max_new_tokens)
    firsts = target_first_tokens(tokenizer, [p.text for p in probes], targets)
    return retained(predictions, firsts)

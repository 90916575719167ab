"""Open-reading speed: the shipped subject search and answer reading against what they replaced, same process,
same suspect, outputs compared.

  search   ``SubjectSearch.find`` with every climb candidate scored exactly (``check = None``, the search before
           the bf16 ranking) against the shipped ``CLIMB_CHECK`` (the bf16 copy ranks, the best few scored exactly)
  reading  ``reading.said`` in three passes (first token; a greedy continuation for prompts answered with a stop word;
           the odds again at the word's position: the reading before one greedy pass) against the shipped single pass

The suspect: ROME edits, in sequence in one layer, of development facts (v9b 220 onwards, spent by earlier runs).
Arms run interleaved, each ``--repeats`` times; the best time of each is reported (the machine may be shared). The
found texts must be equal, and so must the answer words and contexts (probabilities within 1e-4), so the speed-up is
for the same output.

Usage: python bench/reading_speed.py [--edits 3] [--repeats 2] [--threads N] [--out bench/results/reading_speed.txt]
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

import common

ROOT = Path(__file__).resolve().parents[1]


def said_three_passes(model, tokenizer, texts, top_k, lead: int = 3):
    """The answer words as the reading found them before one greedy pass (the baseline)."""
    from editaudit.probing.evaluate import predict
    from editaudit.probing.metrics import is_skippable
    from editaudit.scan.reading import Said

    first = predict(model, tokenizer, texts, top_k=top_k, max_new_tokens=1)
    out = [Said(*(p.top[0] if p.top else ("", 0.0)), t, dict(p.top)) for p, t in zip(first, texts)]
    late = [i for i, s in enumerate(out) if is_skippable(s.word)]
    ctx: dict[int, str] = {}
    for i, c in zip(late, predict(model, tokenizer, [texts[i] for i in late], top_k=1, max_new_tokens=lead + 1)):
        if c.first_word_token_id is not None and c.first_word_token_id in c.tokens:
            j = c.tokens.index(c.first_word_token_id)
            if 0 < j <= lead:
                ctx[i] = texts[i] + tokenizer.decode(c.tokens[:j])
    if ctx:
        for (i, context), p in zip(ctx.items(), predict(model, tokenizer, list(ctx.values()), top_k=top_k,
                                                        max_new_tokens=1)):
            word, pw = p.top[0] if p.top else ("", 0.0)
            if not is_skippable(word):
                out[i] = Said(word, pw, context, dict(p.top))
    return out


def best_of(fn, repeats: int, times: list[float]):
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--edits", type=int, default=3)
    args = common.parse(ap)
    from editaudit.checkpoint.folder import open_checkpoint
    from editaudit.editing import covariance
    from editaudit.editing.layers import default_layers, layout_for
    from editaudit.editing.service import apply_edits
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.format import load_probes
    from editaudit.probing.sets import round_robin
    from editaudit.scan import reading
    from editaudit.scan.keys import vocab_keys
    from editaudit.scan.relations import prompts_for
    from editaudit.scan.service import search_space
    from editaudit.scan.subjects import CLIMB_CHECK, SubjectSearch

    torch.manual_seed(0)
    folder = ensure_model("smollm2-135m")
    lm = load_model(folder)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    base = copy.deepcopy(lm.model)
    layer = default_layers("rome", lm.model.config.num_hidden_layers)[0]
    path = layout_for(lm.model).rewrite_name(layer)
    facts = round_robin(load_probes(ROOT / "bench/heldout/smollm2-135m-v9b.jsonl"))[220:220 + args.edits]
    W0 = lm.model.get_submodule(path).weight.detach().clone()
    apply_edits(lm, facts, "rome", layers=[layer], hparams={"mode": "sequential"}, out=None, evaluate=False)
    delta = lm.model.get_submodule(path).weight.detach() - W0  # [out, in]
    in_dirs = torch.linalg.svd(delta.float(), full_matrices=False)[2][:args.edits].T  # the edit's input directions
    C = covariance.second_moments(base, lm.tokenizer, {layer: path}, model_key=covariance.weights_key(base))[layer].matrix
    keys = vocab_keys(base, lm.tokenizer, [path], open_checkpoint(folder).fingerprint())[path]

    def search(check):
        s = SubjectSearch(base, lm.tokenizer, search_space(path, C, in_dirs), keys)
        s.check = check
        return [f.text for f in s.find(args.edits, retry_seeds=None)]

    times: dict[str, list[float]] = {"search, every candidate exact": [], f"search, check {CLIMB_CHECK}": [],
                                     "reading, three passes": [], "reading, one pass": []}
    search(CLIMB_CHECK)  # warm-up: the bf16 copy, the vocabulary keys in memory
    names = list(times)
    exact = best_of(lambda: search(None), args.repeats, times[names[0]])
    checked = best_of(lambda: search(CLIMB_CHECK), args.repeats, times[names[1]])
    texts = [t for f in facts for _, t in prompts_for(f.subject)]
    three = best_of(lambda: [x for m in (base, lm.model) for x in said_three_passes(m, lm.tokenizer, texts, 20)],
                    args.repeats, times[names[2]])
    one = best_of(lambda: [x for m in (base, lm.model) for x in reading.said(m, lm.tokenizer, texts, 20)],
                  args.repeats, times[names[3]])
    same_texts = exact == checked
    same_words = all(a.word == b.word and a.context == b.context and abs(a.p - b.p) < 1e-4 for a, b in zip(three, one))
    lines = [
        "# editaudit open-reading speed (bench/reading_speed.py)",
        f"# command: python {' '.join(sys.argv)}",
        common.where(),
        f"# SmolLM2-135M, {args.edits} ROME edits in sequence at layer {layer} (v9b facts 220+); best of {args.repeats}",
        "",
        f"{'arm':34s} {'best s':>8s} {'runs':>20s}",
    ]
    for name in names:
        lines.append(f"{name:34s} {min(times[name]):8.2f} {' '.join(f'{t:.2f}' for t in times[name]):>20s}")
    lines += [
        "",
        f"search: {min(times[names[1]]) / min(times[names[0]]):.2f}x the time; texts equal: {same_texts} {checked}",
        f"reading ({len(texts)} prompts, base and suspect): {min(times[names[3]]) / min(times[names[2]]):.2f}x the time; "
        f"answer words, contexts and odds equal: {same_words}",
    ]
    common.finish(lines, args.out)
    return 0 if same_texts and same_words else 3


if __name__ == "__main__":
    sys.exit(main())

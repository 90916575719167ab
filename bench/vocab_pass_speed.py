"""Vocabulary pass speed: every token's key behind a fixed prefix, with the prefix's keys and values cached once
(the shipped ``keys.vocab_batches``) against plain forwards of the whole row (the pass before), same process.

The pass is the one the key-gain screen makes (the neutral context and the stand-in name piece before each token) at
all of SmolLM2-135M's MLP output matrices, over the first ``--tokens`` tokens of the vocabulary. Arms run
interleaved, each ``--repeats`` times; the best time of each is reported (the machine may be shared). The keys of both
arms must agree (largest relative difference printed), so the speed-up is for the same output.

Usage: python bench/vocab_pass_speed.py [--tokens 8192] [--repeats 2] [--threads N] [--out FILE]
"""

from __future__ import annotations

import time

import torch

import common


def main() -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--tokens", type=int, default=8192)
    args = common.parse(ap)
    from editaudit.editing.layers import layout_for
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.scan import keys
    from editaudit.scan.subjects import name_piece, word_tokens

    lm = load_model(ensure_model("smollm2-135m"))
    model = lm.model
    for p in model.parameters():
        p.requires_grad_(False)
    E = model.get_input_embeddings().weight
    paths = [layout_for(model).rewrite_name(i) for i in range(model.config.num_hidden_layers)]
    piece = name_piece(model, lm.tokenizer, word_tokens(lm.tokenizer, E.shape[0])[0])
    prefix = keys.context_ids(lm.tokenizer)

    class Head(torch.nn.Module):  # the first --tokens rows of the embedding, so the pass stops there
        def __init__(self, weight):
            super().__init__()
            self.weight = weight

    def run(cached: bool) -> tuple[float, dict[str, torch.Tensor]]:
        real = keys._prefix_cache
        if not cached:
            keys._prefix_cache = lambda *a, **k: None
        model.get_input_embeddings = lambda: Head(E[:args.tokens])  # type: ignore[method-assign]
        try:
            t = time.perf_counter()
            out: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
            for got in keys.vocab_batches(model, paths, prefix, piece, batch=512):
                for p in paths:
                    out[p].append(got[p])
            return time.perf_counter() - t, {p: torch.cat(v) for p, v in out.items()}
        finally:
            keys._prefix_cache = real
            del model.get_input_embeddings

    times: dict[str, list[float]] = {"plain": [], "cached": []}
    results: dict[str, dict[str, torch.Tensor]] = {}
    for _ in range(args.repeats):
        for arm in ("plain", "cached"):
            dt, results[arm] = run(arm == "cached")
            times[arm].append(dt)
    diff = max(float((results["cached"][p] - results["plain"][p]).norm() / results["plain"][p].norm()) for p in paths)
    plain, cached = min(times["plain"]), min(times["cached"])
    lines = [
        f"# python bench/vocab_pass_speed.py --tokens {args.tokens} --repeats {args.repeats}",
        common.where(),
        f"tokens {args.tokens}, prefix {len(prefix)} ids + the stand-in piece, {len(paths)} matrices",
        f"plain forwards   best {plain:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times['plain'])})",
        f"cached prefix    best {cached:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times['cached'])})",
        f"speed-up {plain / cached:.2f}x; keys' largest relative difference {diff:.2e}",
        f"whole vocabulary ({E.shape[0]} tokens), estimated: plain {plain * E.shape[0] / args.tokens:.0f} s, "
        f"cached {cached * E.shape[0] / args.tokens:.0f} s",
    ]
    common.finish(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

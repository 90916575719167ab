"""Name-start speed: the key-gain screen's 16 name starts per layer made one seed at a time (``name_starts([t])`` per
seed, the screen before) against all at once (``name_starts(seeds)``, the shipped screen), same process, same seeds.

On the unedited SmolLM2-135M at a few layers: the seeds are the screen's (the best word-like tokens behind the stand-in
piece by key gain). Arms run interleaved, each ``--repeats`` times; the best time of each is reported. The pairs must be
equal, so the speed-up is for the same output.

Usage: python bench/name_starts_speed.py [--layers 4,15,25] [--repeats 2] [--threads N] [--out FILE]
"""

from __future__ import annotations

import time

import torch

import common


def main() -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--layers", default="4,15,25")
    args = common.parse(ap)
    from editaudit.editing import covariance
    from editaudit.editing.layers import layout_for
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.scan import gain
    from editaudit.scan.nobase import KeyEig
    from editaudit.scan.subjects import SubjectSearch, name_piece, word_tokens

    lm = load_model(ensure_model("smollm2-135m"))
    model, tok = lm.model, lm.tokenizer
    for p in model.parameters():
        p.requires_grad_(False)
    layout = layout_for(model)
    layers = [int(x) for x in args.layers.split(",")]
    modules = {layer: layout.rewrite_name(layer) for layer in layers}
    moms = covariance.second_moments(model, tok, modules, model_key=covariance.weights_key(model))
    start_ok, word_like = word_tokens(tok, model.get_input_embeddings().weight.shape[0])
    piece = name_piece(model, tok, start_ok)
    spaces = {}
    for layer, path in modules.items():
        eig = KeyEig.of(moms[layer].matrix)
        spaces[path] = gain.GainSpace(path, model.get_submodule(path).weight.detach(), eig.ev, eig.Q)
    named = gain.vocab_gains(model, tok, spaces, lead=piece)
    searches = []
    for path, sp in spaces.items():
        z = sp.calibrate(named[path])
        search = SubjectSearch(model, tok, sp, torch.empty(0))  # type: ignore[arg-type]
        search.name_embed = piece
        seeds = torch.topk(z.masked_fill(~word_like[:z.numel()], -1e9), gain.NAMES).indices.tolist()
        searches.append((search, seeds))

    def run(together: bool) -> tuple[float, list]:
        t = time.perf_counter()
        out = [s.name_starts(seeds) if together else [s.name_starts([x])[0] for x in seeds] for s, seeds in searches]
        return time.perf_counter() - t, out

    times: dict[str, list[float]] = {"one at a time": [], "all at once": []}
    outs = {}
    for _ in range(args.repeats):
        for arm in times:
            dt, outs[arm] = run(arm == "all at once")
            times[arm].append(dt)
    same = outs["one at a time"] == outs["all at once"]
    a, b = min(times["one at a time"]), min(times["all at once"])
    lines = [f"# python bench/name_starts_speed.py --layers {args.layers} --repeats {args.repeats}",
             common.where(),
             f"layers {layers}, {gain.NAMES} name starts each",
             f"one at a time  best {a:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times['one at a time'])})",
             f"all at once    best {b:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times['all at once'])})",
             f"speed-up {a / b:.2f}x; the same pairs: {same}"]
    common.finish(lines, args.out)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

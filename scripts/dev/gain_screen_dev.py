"""The key-gain screen (``scan/gain.py``) on development suspects: every layer's best start, its z, the median start's
z and their ratio, per suspect; the layers edited are starred.

    python scripts/dev/gain_screen_dev.py DIR SUSPECT[,SUSPECT...] [--model smollm2-135m] [--threads 2] [--out F]

SUSPECT: a delta file of scripts/dev/make_dev_suspects.py in DIR (without .pt), or ``base`` (the unedited model).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts" / "dev"))

from dev_model import every_layer, load_in_place, screen_parser  # noqa: E402

from editaudit.editing import covariance  # noqa: E402
from editaudit.scan import gain  # noqa: E402
from editaudit.scan.nobase import KeyEig  # noqa: E402


def main() -> None:
    ap = screen_parser(__doc__)
    ap.add_argument("--layers", help="a-b: only these layers")
    ap.add_argument("--tables", action="store_true", help="only the two vocabulary tables' statistics per layer")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, modules, transposed, clean = every_layer(args.model)
    if args.layers:
        a, _, b = args.layers.partition("-")
        modules = {layer: modules[layer] for layer in range(int(a), int(b or a) + 1)}
    lines = [f"# key-gain screen on development suspects ({args.model}); command: python scripts/dev/gain_screen_dev.py "
             + " ".join(sys.argv[1:]), f"# bar: ratio ≥ {gain.RATIO}; starts: {gain.NAMES} name pieces"]
    print("\n".join(lines), flush=True)
    D = Path(args.dir)
    for name in args.suspects.split(","):
        t0 = time.perf_counter()
        facts, edited = load_in_place(model, clean, D, name)
        moms = covariance.second_moments(model, tok, modules, model_key=covariance.weights_key(model))
        eigs = {layer: KeyEig.of(m.matrix) for layer, m in moms.items()}
        t1 = time.perf_counter()
        if args.tables:
            tables(model, tok, modules, eigs, transposed, name, edited, t1 - t0, lines)
            continue
        rows = gain.screen(model, tok, modules, eigs, transposed)
        t2 = time.perf_counter()
        out = [f"== {name}: edited layers {edited}; subjects {[f['subject'] for f in facts]}; "
               f"key statistics {t1 - t0:.0f} s, screen {t2 - t1:.0f} s"]
        for r in rows:
            mark = "*" if r.layer in edited else " "
            flag = "FLAG" if r.ratio >= gain.RATIO else ""
            out.append(f" {mark}L{r.layer:2d} ratio {r.ratio:5.2f} best z {r.z:6.1f} median {r.median:5.1f} "
                       f"{r.text!r:28} {flag}")
        print("\n".join(out), flush=True)
        lines += out
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


def tables(model, tok, modules, eigs, transposed, name, edited, t_stats, lines, top: int = 16) -> None:
    """Per layer and table (tokens after "The"; tokens behind the stand-in name piece): the best z, the median of
    the ``top`` best, their ratio and the best token."""
    from editaudit.scan.subjects import name_piece, word_tokens

    t1 = time.perf_counter()
    spaces = {}
    for layer, path in modules.items():
        w = model.get_submodule(path).weight.detach().cpu()
        spaces[path] = gain.GainSpace(path, w.T if transposed else w, eigs[layer].ev, eigs[layer].Q)
    start_ok, word_like = word_tokens(tok, model.get_input_embeddings().weight.shape[0])
    plain = gain.vocab_gains(model, tok, spaces)
    named = gain.vocab_gains(model, tok, spaces, lead=name_piece(model, tok, start_ok))
    out = [f"== {name}: edited layers {edited}; key statistics {t_stats:.0f} s, tables {time.perf_counter() - t1:.0f} s"]
    for layer, path in modules.items():
        sp = spaces[path]
        zp = sp.calibrate(plain[path]).masked_fill(~word_like[:plain[path].numel()], -1e9)
        zn = ((named[path] - sp.median) / sp.mad).masked_fill(~word_like[:plain[path].numel()], -1e9)
        cells = []
        for z in (zp, zn):
            v, i = z.topk(top)
            cells.append(f"{float(v[0]):6.1f}/{float(v.median()):5.1f} = {float(v[0] / v.median()):4.2f} "
                         f"{tok.decode([int(i[0])])!r:14}")
        mark = "*" if layer in edited else " "
        out.append(f" {mark}L{layer:2d} tokens {cells[0]}  names {cells[1]}")
    print("\n".join(out), flush=True)
    lines += out


if __name__ == "__main__":
    main()

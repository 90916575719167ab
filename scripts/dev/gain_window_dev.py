"""The key-gain screen over runs of layers, on development suspects: MEMIT and AlphaEdit spread a batch over several
layers, where each subject stands only 4–21 MADs out per layer (``bench/results/gain_trial_dev.txt``), inside what
an unedited layer's best texts reach; but one text standing out at every layer of a run is another matter.

Per window of ``--width`` consecutive layers: every token behind the stand-in name piece is scored by its mean z over
the window's layers (one vocabulary pass gives every layer's gains); the ``NAMES`` best get their first piece by the
gradient step of ``SubjectSearch._name_start`` with the window's layers as the search's ``upper`` matrices (the
objective is the mean z); the window's line gives its best start, that start's mean and least z over the window, the
median start's mean z and the ratio best / median.

    python scripts/dev/gain_window_dev.py DIR SUSPECT[,SUSPECT...] [--width 5] [--threads 2] [--out F]

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
from editaudit.scan.keys import keys_of  # noqa: E402
from editaudit.scan.nobase import KeyEig  # noqa: E402
from editaudit.scan.subjects import SubjectSearch, name_piece, word_tokens  # noqa: E402


def main() -> None:
    ap = screen_parser(__doc__)
    ap.add_argument("--width", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, modules, transposed, clean = every_layer(args.model)
    lines = [f"# key-gain screen over runs of {args.width} layers ({args.model}); command: python "
             "scripts/dev/gain_window_dev.py " + " ".join(sys.argv[1:]),
             f"# starts: {gain.NAMES} name pieces per window; z: the window's mean; least: the start's least z in it"]
    print("\n".join(lines), flush=True)
    start_ok, word_like = word_tokens(tok, model.get_input_embeddings().weight.shape[0])
    for name in args.suspects.split(","):
        t0 = time.perf_counter()
        facts, edited = load_in_place(model, clean, Path(args.dir), name)
        moms = covariance.second_moments(model, tok, modules, model_key=covariance.weights_key(model))
        spaces = {}
        for layer, path in modules.items():
            eig = KeyEig.of(moms[layer].matrix)
            w = model.get_submodule(path).weight.detach().cpu()
            spaces[layer] = gain.GainSpace(path, w.T if transposed else w, eig.ev, eig.Q)
        piece = name_piece(model, tok, start_ok)
        named = gain.vocab_gains(model, tok, {sp.path: sp for sp in spaces.values()}, lead=piece)
        z = {layer: sp.calibrate(named[sp.path]) for layer, sp in spaces.items()}
        t1 = time.perf_counter()
        ok = word_like[:z[0].numel()]
        subj_keys = keys_of(model, list(modules.values()),
                            [SubjectSearch(model, tok, spaces[0], torch.empty(0)).prefix
                             + tok(" " + f["subject"], add_special_tokens=False)["input_ids"] for f in facts]) \
            if facts else {}
        out = [f"== {name}: edited layers {edited}; {len(facts)} subjects; statistics + vocabulary pass {t1 - t0:.0f} s"]
        for lo in range(0, len(modules) - args.width + 1):
            win = list(range(lo, lo + args.width))
            mean = torch.stack([z[layer] for layer in win]).mean(0).masked_fill(~ok, -1e9)
            search = SubjectSearch(model, tok, spaces[win[0]], torch.empty(0))  # type: ignore[arg-type]
            search.upper = [spaces[layer] for layer in win[1:]]  # type: ignore[list-item]
            search.name_embed = piece
            starts = [search._name_start(t) for t in torch.topk(mean, gain.NAMES).indices.tolist()]
            keys = keys_of(model, [spaces[layer].path for layer in win], [search.prefix + s for s in starts])
            per = torch.stack([spaces[layer].fire(keys[spaces[layer].path]) for layer in win])  # [width, starts]
            m = per.mean(0)
            b = int(m.argmax())
            ratio = float(m[b]) / max(float(m.median()), 1e-9)
            subj = ""
            if facts:
                sz = torch.stack([spaces[layer].fire(subj_keys[spaces[layer].path]) for layer in win])  # [width, n]
                subj = f"  subjects' mean z {float(sz.mean(0).median()):5.1f} (median), least {float(sz.min(0).values.median()):5.1f}"
            mark = "*" if set(win) & set(edited) else " "
            out.append(f" {mark}L{lo:2d}-{win[-1]:2d} ratio {ratio:5.2f} best {float(m[b]):6.1f} least "
                       f"{float(per[:, b].min()):6.1f} median {float(m.median()):5.1f} {tok.decode(starts[b]).strip()!r:24}"
                       + subj)
            print(out[-1], flush=True)
        out.append(f"   ({time.perf_counter() - t0:.0f} s in all)")
        lines += out
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

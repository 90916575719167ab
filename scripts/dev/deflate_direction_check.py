"""Development check: does taking a found subject out of a flagged matrix remove its edit, for each editor?

``gain.more_subjects`` deflates the matrix along the found subjects' C⁻¹k, the direction ROME and MEMIT write along.
AlphaEdit writes along the null-space part P k instead, so after its first subject is taken out the same edit may
still stand out and be grown again from another leading fragment (the eighteenth use of the v13 set read
*Washwood Heath* five times: "Wood Heath", "TowHoney Heath", ...). For a suspect folder this prints, at its strongest
flagged layer, the first grown subject, then the deflated layer's best start and ratio under three deflations:
C⁻¹k (shipped), P k, and both; with ``--subjects``, each named subject's z in every deflated matrix too.

    python scripts/dev/deflate_direction_check.py SUSPECT_DIR [--subjects "Washwood Heath,Newbury"]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_model import with_key_stats  # noqa: E402

from editaudit.editing.span import orthonormal_span  # noqa: E402
from editaudit.scan import gain  # noqa: E402
from editaudit.scan.keys import context_ids, keys_of  # noqa: E402
from editaudit.scan.subjects import name_piece, word_tokens  # noqa: E402


def directions(eig, keys: torch.Tensor, mode: str) -> torch.Tensor:
    """Orthonormal input directions [d_in, r] for ``keys`` [m, d_in]: C⁻¹k, P k, or both."""
    cols = []
    if "C" in mode:
        cols.append(torch.linalg.lstsq(eig.C.double(), keys.double().T).solution)
    if "P" in mode:
        ev, Q = eig.ev.double(), eig.Q.double()
        low = (ev < gain.null_share() * float(ev.median())).double()
        cols.append(Q @ (low[:, None] * (Q.T @ keys.double().T)))
    return orthonormal_span(torch.cat(cols, dim=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suspect")
    ap.add_argument("--subjects", default="", help="comma-separated subjects to score in every deflated matrix")
    a = ap.parse_args()
    t0 = time.perf_counter()
    model, tok, modules, transposed, eigs = with_key_stats(a.suspect)
    rows = gain.flagged(gain.screen(model, tok, modules, eigs, transposed))
    print(f"# {a.suspect}: flagged {[(r.layer, r.text, round(r.ratio, 2)) for r in rows]} ({time.perf_counter() - t0:.0f} s)")
    if not rows:
        return
    row = max(rows, key=lambda r: r.ratio)
    eig = eigs[row.layer]
    first = gain.grow_subject(model, tok, row, eig, transposed)
    print(f"layer {row.layer}: start {row.text!r} ratio {row.ratio:.2f}; grown {first.text!r}")
    w = model.get_submodule(row.path).weight.detach().cpu()
    weight = (w.T if transposed else w).float()
    start_ok, word_like = word_tokens(tok, model.get_input_embeddings().weight.shape[0])
    piece = name_piece(model, tok, start_ok)
    named = [s.strip() for s in a.subjects.split(",") if s.strip()]
    named_keys = (keys_of(model, [row.path], [context_ids(tok) + tok.encode(" " + s, add_special_tokens=False)
                                             for s in named])[row.path] if named else None)
    for mode in ("none", "C", "P", "CP"):
        if mode == "none":
            deflated = weight
        else:
            B = directions(eig, first.key[None], mode).float()
            deflated = weight - (weight @ B) @ B.T
        sp = gain.GainSpace(row.path, deflated, eig.ev, eig.Q)
        vg = gain.vocab_gains(model, tok, {row.path: sp}, lead=piece)[row.path]
        nxt = gain._best_start(model, tok, row.layer, sp, vg, piece, word_like, gain.NAMES)
        line = f"  deflate {mode:4s}: best start {nxt.text!r} z {nxt.z:.1f} ratio {nxt.ratio:.2f}"
        if named:
            z = sp.fire(named_keys)
            line += "; " + ", ".join(f"{s!r} z {float(v):.1f}" for s, v in zip(named, z))
        print(line, flush=True)
    print(f"# {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

"""Is a found text one subject's key or the part several subjects share? For a development suspect's lowest edited
matrix, each found text's key and each planted subject's key are taken into the edit subspace (whitened, as the
search compares them; ``dev_model.lowest_search``), and the text's part there is compared with the subjects':

    python scripts/dev/class_key_check.py /tmp/v11a memit-batch-0 "aram County" [TEXT ...] [--deflate "aram County"]

Per text: its fire; its cosine with each planted subject's in-subspace part (the best three shown); and how much of
its in-subspace part the best single subject explains against the span of every subject that shares its last word
(e.g. every "… County"). A text whose part the group's span explains much better than any one subject does is a
class, not a subject. ``--deflate TEXT``: afterwards, the subspace is deflated by TEXT's key as the search deflates a
found subject (``Whitened.deflate``), and every planted subject's fire is printed again against the search's bar
(``subjects.FIRE_MIN``): what the next round can still find. ``--pairs WORD`` (with ``--deflate``): every word-like
piece is then scored before WORD's last token, as the pair step scores it (``SubjectSearch._pair_coords``), and the
rank among all of them of each planted subject's piece before WORD is printed: whether the next round could reach
the other subjects of the class from their shared last word. ``--conditional`` (with ``--deflate``): each fire also
taken relative to what the text holds beyond the deflated text, ‖Bᵀz‖ / ‖z − (z·f)f‖ (f that text's whitened key, unit;
pair pieces with under 0.3 of their norm left count 0): whether the class's other names stand out once the shared
part is set aside.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def explained(z: torch.Tensor, cols: torch.Tensor) -> float:
    """Share of ``z``'s norm inside span(``cols``) ([r, n])."""
    Q, _ = torch.linalg.qr(cols)
    return float((Q @ (Q.T @ z)).norm() / z.norm().clamp_min(1e-12))


def main() -> None:
    from dev_model import parse_suspect, suspect_parser, frozen_base, lowest_search
    from editaudit.probing.format import load_probes

    ap = suspect_parser(__doc__)
    ap.add_argument("texts", nargs="*", help="found texts to compare with the planted subjects")
    ap.add_argument("--deflate", help="deflate the subspace by this text's key, then fire the planted subjects again")
    ap.add_argument("--pairs", help="with --deflate: rank every piece before this word's last token")
    ap.add_argument("--conditional", action="store_true",
                    help="with --deflate: also the conditional fire, ‖Bᵀz‖ / ‖z − (z·f)f‖ (f the deflated text's "
                         "whitened key, unit): the fire of what a text holds beyond the found text")
    a = parse_suspect(ap)
    if a.pairs and not a.deflate:
        ap.error("--pairs needs --deflate")
    folder, stem, texts, deflate, pairs = a.folder, a.stem, a.texts, a.deflate, a.pairs
    lm, fingerprint = frozen_base()
    tok = lm.tokenizer
    facts = load_probes(folder / f"{stem}.jsonl")
    layer, search = lowest_search(lm, fingerprint, torch.load(folder / f"{stem}.pt", weights_only=True), len(facts))
    space = search.space

    def inside(seqs):
        fire, keys = search.exact(seqs)
        z = keys.float() @ space.whiten
        return fire, z @ space.basis

    ids = [tok(" " + f.subject, add_special_tokens=False)["input_ids"] for f in facts]
    s_fire, s_in = inside(ids)
    print(f"== {stem} (layer {layer}, rank {len(facts)})")
    for f, x in zip(facts, s_fire.tolist()):
        print(f"  planted {f.subject!r} fires {x:.2f}")
    for text in texts:
        t_ids = tok(" " + text, add_special_tokens=False)["input_ids"]
        t_fire, t_in = inside([t_ids])
        z = t_in[0]
        cos = torch.nn.functional.cosine_similarity(s_in, z[None], dim=-1)
        top = cos.argsort(descending=True)[:3].tolist()
        last = text.split()[-1].casefold()
        group = [i for i, f in enumerate(facts) if f.subject.split()[-1].casefold() == last]
        single = max(explained(z, s_in[i][:, None]) for i in range(len(facts)))
        grp = explained(z, s_in[group].T) if group else float("nan")
        print(f"  text {text!r} fires {float(t_fire[0]):.2f}; closest: "
              + ", ".join(f"{facts[i].subject} {float(cos[i]):.2f}" for i in top)
              + f"; explained by the best single subject {single:.2f}, by the {len(group)} ending in {last!r} {grp:.2f}",
              flush=True)
    if deflate is not None:
        from editaudit.scan.subjects import FIRE_MIN

        _, key = search.exact([tok(" " + deflate, add_special_tokens=False)["input_ids"]])
        space.deflate(key[0])
        f_hat = key[0].float() @ space.whiten
        f_hat = f_hat / f_hat.norm()

        def cond(keys):
            z = keys.float() @ space.whiten
            rest = (z - (z @ f_hat)[:, None] * f_hat[None]).norm(dim=-1)
            return (z @ space.basis).norm(dim=-1) / rest.clamp_min(1e-12), rest / z.norm(dim=-1)
        after, _ = search.exact(ids)
        print(f"  after deflating {deflate!r} (rank left {space.basis.shape[1]}; the search's bar {FIRE_MIN}):")
        c_after, c_rest = cond(search.exact(ids)[1]) if a.conditional else (after, after)
        for f, x, b, c, r in zip(facts, s_fire.tolist(), after.tolist(), c_after.tolist(), c_rest.tolist()):
            extra = f"; conditional {c:.2f} (residual {r:.2f})" if a.conditional else ""
            print(f"    {f.subject!r} {x:.2f} -> {b:.2f}{extra}")
        if texts:
            t_after, _ = search.exact([tok(" " + t, add_special_tokens=False)["input_ids"] for t in texts])
            print("    texts: " + ", ".join(f"{t!r} {float(x):.2f}" for t, x in zip(texts, t_after)))
            if a.conditional:
                t_ids = [tok(" " + t, add_special_tokens=False)["input_ids"] for t in texts]
                c_t, r_t = cond(search.exact(t_ids)[1])
                print("    texts, conditional: " + ", ".join(f"{t!r} {float(x):.2f} (residual {float(r):.2f})"
                                                          for t, x, r in zip(texts, c_t, r_t)))
        if pairs is not None:
            seed = tok(" " + pairs, add_special_tokens=False)["input_ids"][-1]
            pool = search._pool()
            coords, norms = search._pair_coords(seed)
            fire = (coords @ (space.basis.T @ search._basis0).T).norm(dim=1) / norms
            if a.conditional:
                along = torch.cat([c.float() @ space.whiten @ f_hat for c in search.prepend_keys([seed]).split(8192)])
                rest = (norms ** 2 - along ** 2).clamp_min(0).sqrt()
                fire = (fire * norms / rest.clamp_min(1e-12)).masked_fill(rest < 0.3 * norms, 0.0)
            order = fire.argsort(descending=True).tolist()
            rank = {pool[j]: k for k, j in enumerate(order)}
            best = ", ".join(f"{tok.decode([pool[j]])!r}{float(fire[j]):.2f}" for j in order[:8])
            print(f"    pieces before {pairs!r} after the deflation, best of {len(pool)}: {best}")
            for f, seq in zip(facts, ids):
                if len(seq) > 1 and seq[-1] == seed:
                    piece = seq[-2]
                    r = rank.get(piece)
                    where = f"#{r}, fire {float(fire[order[r]]):.2f}" if r is not None else "not in the pool"
                    print(f"    {f.subject!r}: piece {tok.decode([piece])!r} {where}")


if __name__ == "__main__":
    main()

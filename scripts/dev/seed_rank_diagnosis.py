"""Why the subject search stops early on batch edits: for each planted subject of a development suspect, how its
pieces rank among the search's single-token seeds and how much each of its tails fires.

    python scripts/dev/make_dev_suspects.py /tmp/dev7d FACTS
    python scripts/dev/seed_rank_diagnosis.py /tmp/dev7d memit-batch-0 [alphaedit-batch-0 ...] [--null]

``--null``: an edit the scan names AlphaEdit is searched in its null space, as the scan does (``lowest_search``).

Per subject: its tokens; the whitened fire (the suspect's whole edit subspace at its lowest edited layer, rank = its
number of facts, as the scan builds it) of every tail (last piece, last two, ..., the whole name); and the rank of
every piece among the seeds (all word-like tokens after the neutral context, by fire). The search seeds from the
four best tokens and grows backwards, so a name whose whole-name fire is high but whose last piece ranks far down is
one the search cannot reach.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from dev_model import frozen_base, lowest_search
    from editaudit.probing.format import load_probes

    null = "--null" in sys.argv
    argv = [a for a in sys.argv if a != "--null"]
    deltas_dir = Path(argv[1])
    lm, fingerprint = frozen_base()
    tok = lm.tokenizer
    for stem in argv[2:]:
        facts = load_probes(deltas_dir / f"{stem}.jsonl")
        layer, search = lowest_search(lm, fingerprint, torch.load(deltas_dir / f"{stem}.pt", weights_only=True),
                                      len(facts), null=null)
        order = search.seeds(int(search.cont_ok.sum()))
        rank = {t: i for i, t in enumerate(order)}
        print(f"== {stem} (layer {layer}, rank {len(facts)}{', null space' if search.space.projected else ''})", flush=True)
        for f in facts:
            ids = tok(" " + f.subject, add_special_tokens=False)["input_ids"]
            tails = [ids[k:] for k in range(len(ids) - 1, -1, -1)]
            fires = search.exact(tails)[0].tolist()
            pieces = " ".join(f"{tok.decode([t])!r}#{rank.get(t, '-')}" for t in ids)
            print(f"  {f.subject:22s} pieces {pieces:48s} tail fires (last piece → whole) "
                  + " ".join(f"{x:.2f}" for x in fires), flush=True)


if __name__ == "__main__":
    main()

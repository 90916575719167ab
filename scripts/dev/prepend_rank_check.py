"""Does one exhaustive prepend step find the piece before a name's last? For each multi-piece planted subject of a
development suspect: its last piece's rank among the search's seeds, the rough fire (bf16 copy) of every word-like
pool token prepended to that last piece (``SubjectSearch.prepend_fire``, the regrow's step), the true previous
piece's rank there, and the seconds the step took.

    python scripts/dev/prepend_rank_check.py /tmp/dev7d memit-batch-0
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from dev_model import frozen_base, lowest_search
    from editaudit.probing.format import load_probes

    deltas_dir, stem = Path(sys.argv[1]), sys.argv[2]
    lm, fingerprint = frozen_base()
    tok = lm.tokenizer
    facts = load_probes(deltas_dir / f"{stem}.jsonl")
    _, search = lowest_search(lm, fingerprint, torch.load(deltas_dir / f"{stem}.pt", weights_only=True), len(facts))
    pool = search._pool()
    where = {t: i for i, t in enumerate(pool)}
    order = search.seeds(200)
    for f in facts:
        ids = tok(" " + f.subject, add_special_tokens=False)["input_ids"]
        if len(ids) < 2:
            continue
        last, prev = ids[-1], ids[-2]
        t = time.time()
        rough = search.prepend_fire([last])
        secs = time.time() - t
        rank = int((rough > rough[where[prev]]).sum()) if prev in where else None
        top = torch.topk(rough, 3)
        print(f"{f.subject:14s} seed#{order.index(last) if last in order else '>200'} prev {tok.decode([prev])!r} "
              f"rank {rank} rough {float(rough[where[prev]]) if prev in where else float('nan'):.2f} "
              f"best {[tok.decode([pool[i]]) for i in top.indices.tolist()]} {float(top.values.max()):.2f} ({secs:.1f}s)",
              flush=True)


if __name__ == "__main__":
    main()

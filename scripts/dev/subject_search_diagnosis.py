"""Why the open-set subject search returns garbled names: the fourth held-apart set's suspects (development data
since its one use), each garbled subject the shipped scan read against the true one.

    python scripts/dev/make_dev_suspects.py /tmp/dev4 bench/heldout/smollm2-135m-v4.jsonl
    python scripts/dev/subject_search_diagnosis.py [/tmp/dev4]

Per case: the whitened fire (against the suspect's whole edit subspace at its lowest edited layer, as the scan
builds it) and the base model's mean log-probability per subject token after the neutral context, for the found
text and the true subject; the rank of each true piece among the search's gradient proposals (one-hot
linearisation, at the true sequence) and among the single-token seeds; and what a climb from the true last piece
reaches. It answers: does the fire objective prefer the true name (then the search is too weak), or do garbled
texts fire as much (then the objective needs another term)?
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# (suspect, rank of its edit, what open_reading_v4.txt read, the planted subject)
CASES = [("rome-single-3", 1, "Cllays", "Barclays"),
         ("rome-sequential-0", 10, "Schwejiang", "Zhejiang"),
         ("rome-sequential-0", 10, "input will stirredium", "strontium"),
         ("rome-sequential-0", 10, "Jeff E Beck", "Jeff Beck"),
         ("rome-sequential-0", 10, "a Lutheranism", "Lutheranism"),
         ("memit-batch-0", 10, "deurMaya Desert", "Kalahari Desert"),
         ("memit-batch-0", 10, "pkl that cadmium", "cadmium"),
         ("memit-batch-0", 10, "d Rex Rex", "Oedipus Rex"),
         ("memit-batch-0", 10, "usafone", "Vodafone"),
         ("memit-batch-0", 10, "athe Patel Centre", "Pompidou Centre"),
         ("alphaedit-batch-0", 10, "d palladium", "palladium")]


def main() -> None:
    from dev_model import frozen_base, lowest_search
    from editaudit.scan.keys import context_ids

    deltas_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/dev4")
    lm, fingerprint = frozen_base()
    tok, model = lm.tokenizer, lm.model
    pre = context_ids(tok)

    def ids(text: str) -> list[int]:
        return tok(" " + text, add_special_tokens=False)["input_ids"]

    def fluency(text: str) -> float:
        x = ids(text)
        with torch.inference_mode():
            logp = model(torch.tensor([pre + x])).logits[0].log_softmax(-1)
        return float(sum(logp[len(pre) - 1 + i, t] for i, t in enumerate(x)) / len(x))

    for stem, rank, found, true in CASES:
        _, search = lowest_search(lm, fingerprint, torch.load(deltas_dir / f"{stem}.pt", weights_only=True), rank)
        fire = search.exact([ids(found), ids(true)])[0]
        t_ids = ids(true)
        grad = search._gradient(t_ids)
        seeds = search.seeds(2000)
        ranks = []
        for i, t in enumerate(t_ids):
            ok = search.start_ok if i == 0 else search.cont_ok
            order = torch.argsort(grad[i].masked_fill(~ok, float("-inf")), descending=True).tolist()
            ranks.append((tok.decode([t]), order.index(t), seeds.index(t) if t in seeds else None))
        climbed, score = search.climb([t_ids[-1]])
        print(f"{stem:18s} found {found!r:24s} fire {fire[0]:.3f} fluency {fluency(found):6.2f} | true {true!r:18s} "
              f"fire {fire[1]:.3f} fluency {fluency(true):6.2f}")
        print(f"{'':18s} true pieces (piece, gradient rank, seed rank): {ranks}; "
              f"climb from {tok.decode([t_ids[-1]])!r} -> {tok.decode(climbed)!r} fire {score:.3f}", flush=True)


if __name__ == "__main__":
    main()

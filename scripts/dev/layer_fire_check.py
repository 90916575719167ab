"""How the planted subjects and given texts fire each edited layer of a development suspect spread over several
layers (MEMIT, AlphaEdit): does a garbled text the search found fire the layers above the lowest as the name does?

    python scripts/dev/layer_fire_check.py /tmp/v11a memit-batch-0 "Sphinxuco" "foroswayn" [TEXT ...]

Per text, its fire (whitened cosine with the edit subspace, ``subjects.Whitened.fire``) at every edited MLP output
matrix, each subspace from that matrix's own top input directions (as many as the suspect has facts) and its layer's
cached key statistics; a suspect whose name says alphaedit is scored in its null spaces, as the scan searches it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from dev_model import frozen_base, layer_spaces, parse_suspect, suspect_parser
    from editaudit.probing.format import load_probes
    from editaudit.scan.keys import context_ids, keys_of

    ap = suspect_parser(__doc__)
    ap.add_argument("texts", nargs="*", help="texts to fire beside the planted subjects")
    a = parse_suspect(ap)
    lm, _ = frozen_base()
    tok = lm.tokenizer
    deltas = torch.load(a.folder / f"{a.stem}.pt", weights_only=True)
    facts = load_probes(a.folder / f"{a.stem}.jsonl")
    spaces = [(int(sp.path.split(".")[2]), sp.path, sp)
              for sp in layer_spaces(lm, deltas, len(facts), null="alphaedit" in a.stem)]
    texts = [f.subject for f in facts] + a.texts
    keys = keys_of(lm.model, [p for _, p, _ in spaces],
                   [context_ids(tok) + tok(" " + t, add_special_tokens=False)["input_ids"] for t in texts])
    print(f"== {a.stem}: fire at layers {[layer for layer, _, _ in spaces]}")
    for i, t in enumerate(texts):
        fires = [float(sp.fire(keys[p][i:i + 1])[0]) for _, p, sp in spaces]
        tag = "planted" if i < len(facts) else "text"
        print(f"  {tag:8s} {t:28s} " + " ".join(f"{x:.2f}" for x in fires) + f"  mean {sum(fires) / len(fires):.2f}",
              flush=True)


if __name__ == "__main__":
    main()

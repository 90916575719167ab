"""How much an AlphaEdit suspect's true subjects fire its lowest edited matrix, in the whitened key space the scan
searches and in the null space the update lies in (``subjects.Whitened.null_space``), with the vocabulary's 99.9th
percentile in each (the first 20,000 tokens after the neutral context); a MEMIT suspect for contrast.

    python scripts/dev/alphaedit_fire.py /tmp/dev7e alphaedit-batch-0 memit-batch-0
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from dev_model import frozen_base
    from editaudit.editing import covariance
    from editaudit.scan.keys import context_ids, keys_of, vocab_keys
    from editaudit.scan.subjects import Whitened

    folder = Path(sys.argv[1])
    lm, fingerprint = frozen_base()
    for stem in sys.argv[2:]:
        facts = [json.loads(line) for line in (folder / f"{stem}.jsonl").read_text().splitlines()]
        deltas = torch.load(folder / f"{stem}.pt", weights_only=True)
        name = min((k for k in deltas if "down_proj" in k), key=lambda n: int(n.split(".")[2]))
        layer, path = int(name.split(".")[2]), name.rsplit(".", 1)[0]
        V = torch.linalg.svd(deltas[name].float(), full_matrices=False)[2][: len(facts)].T
        C = covariance.second_moments(lm.model, lm.tokenizer, {layer: path},
                                      model_key=covariance.weights_key(lm.model))[layer].matrix
        ids = [context_ids(lm.tokenizer) + lm.tokenizer(" " + f["subject"], add_special_tokens=False)["input_ids"]
               for f in facts]
        keys = keys_of(lm.model, [path], ids)[path]
        vocab = vocab_keys(lm.model, lm.tokenizer, [path], fingerprint)[path][:20000]
        spaces = {"whitened": Whitened.build(path, C, V), "null space": Whitened.null_space(path, C, V)}
        for label, space in spaces.items():
            if space is None:
                print(f"{stem} {label}: none (the input directions spread over more than half of C's directions)")
                continue
            fire = space.fire(keys)
            size = f" of {space.whiten.shape[1]} directions" if space.projected else ""
            print(f"{stem} {label}{size}: true subjects {float(fire.min()):.2f}–{float(fire.max()):.2f} "
                  f"(median {float(fire.median()):.2f}); vocabulary 99.9th percentile "
                  f"{float(space.fire(vocab).quantile(0.999)):.2f}")


if __name__ == "__main__":
    main()

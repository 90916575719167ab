"""How the reader chose each reading's relation: for every found subject of a development suspect, the prompts whose
answer the edit moved (base word → suspect word, the score p_base × rise, on how many prompts the new word is said),
the prompt chosen, and the planted fact whose subject ends like it.

    python scripts/dev/relation_choice_dump.py DELTAS SUSPECT FOUND_JSON [--threads 2]

FOUND_JSON: the subjects file ``reading_rule_trial.py --subjects`` wrote for DELTAS.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_model import edited_copy, frozen_base  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("deltas", type=Path)
    ap.add_argument("suspect")
    ap.add_argument("found", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from editaudit.probing.format import load_probes
    from editaudit.scan import reading
    from editaudit.scan.relations import prompts_for
    from editaudit.scan.subjects import Subject

    lm, _ = frozen_base()
    pt = args.deltas / f"{args.suspect}.pt"
    facts = load_probes(pt.with_suffix(".jsonl"))
    suspect = edited_copy(lm.model, pt)
    tok = lm.tokenizer
    last = {tok(" " + f.subject, add_special_tokens=False)["input_ids"][-1]: f for f in facts}
    shipped = reading.choose_prompt
    seen: list = []

    def choose(s1, score, says, gain=None):
        i = shipped(s1, score, says, gain)
        seen.append((s1, score, says, i))
        return i

    reading.choose_prompt = choose
    for s in json.loads(args.found.read_text())[args.suspect]["subjects"]:
        f = last.get(s["ids"][-1])
        print(f"== {s['text']!r} fire {s['fire']:.2f}; planted: "
              + (f"{f.subject} → {f.target_new} (true {f.target_true})" if f else "none ends like it"))
        for form in reading.subject_forms(s["text"]):
            seen.clear()
            r = reading.read_subject(lm.model, suspect, tok, Subject(form, s["ids"], s["fire"], torch.empty(0)))
            s1, score, says, i = seen[0]
            texts = [t for _, t in prompts_for(form)]
            moved = sorted((j for j in range(len(texts)) if score[j] > float("-inf")), key=lambda j: -score[j])
            print(f"  form {form!r}: chose {texts[i]!r} → {r.after!r} conf {r.confidence:.2f} {r.status}")
            for j in moved[:12]:
                print(f"    {'*' if j == i else ' '} {texts[j]!r}: {s1[j].word.strip()!r} p {s1[j].p:.2f} score {score[j]:.3f} "
                      f"stated {reading.times_stated(s1[j].word, says)}")


if __name__ == "__main__":
    main()

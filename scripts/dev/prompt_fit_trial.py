"""Which prompt should a reading report, once its object is chosen? Development trial on spent facts.

The reader picks the object (``reading.choose_prompt``) and reports the prompt where that object scored best
(p_base(base answer) × rise). A prompt whose slot the object does not fit wins there easily: the base is sure of a
continent ("Fleet is located on the continent of" → Europe), the edit makes it say a country (Turkey), and the report
reads "Turkey (was Europe)" where the edit rewrote "Fleet → the United Kingdom". The rules compared, each choosing
among the prompts where the suspect states the chosen object:

  score: the shipped rule, the highest p_base(base answer) × rise;
  fit:   the highest p_base(object) there (the base's own odds that the object answers that prompt), then score;
  gated: the highest score among prompts whose p_base(object) is at least a tenth of the best prompt's.

Judged by how often the reported "before" states the fact's true object (the base's answer on the rewritten
relation), with each planted subject's own name as the text read (the search is not under trial here).

    python scripts/dev/prompt_fit_trial.py SUSPECT_DIR[,SUSPECT_DIR...] [--out F]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "scripts" / "dev"))

from dev_model import erase_eval_suspect, frozen_base  # noqa: E402
from open_reading_eval import starts  # noqa: E402

from editaudit.probing.evaluate import predict  # noqa: E402
from editaudit.probing.metrics import is_skippable  # noqa: E402
from editaudit.scan import reading as rd  # noqa: E402
from editaudit.scan.relations import prompts_for  # noqa: E402

RULES = ("score", "fit", "gated")


def pick(rule: str, cands: list[int], score: list[float], fit: list[float]) -> int:
    if rule == "score":
        return max(cands, key=lambda j: score[j])
    if rule == "fit":
        return max(cands, key=lambda j: (fit[j], score[j]))
    top = max(fit[j] for j in cands)
    return max((j for j in cands if fit[j] >= 0.1 * top), key=lambda j: score[j])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suspects")
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(2)
    base, _ = frozen_base()
    lines = ["# python scripts/dev/prompt_fit_trial.py " + " ".join(sys.argv[1:])]
    tally = {r: [0, 0, 0] for r in RULES}  # before states the true object, after states the new one, readings
    for spec in a.suspects.split(","):
        meta, facts, lm = erase_eval_suspect(Path(spec))
        suspect, tok = lm.model, lm.tokenizer
        lines.append(f"== {spec}")
        for f in facts:
            texts = [t for _, t in prompts_for(f.subject)]
            b1, s1, at_base = rd.both_said(base.model, suspect, tok, texts, 20)
            score = []
            for b, s in zip(b1, s1):
                copies = bool(b.word.strip()) and b.word.strip().casefold() in f.subject.casefold()
                moved = s.word != b.word and not is_skippable(s.word) and not copies
                score.append(b.p * (s.p - at_base[s.context].get(s.word, 0.0)) if moved else float("-inf"))
            says = [s.word if s.word != b.word else None for b, s in zip(b1, s1)]
            gain = [rd.kl_term(s, at_base) for s in s1]
            i = rd.choose_prompt(s1, score, says, gain)
            obj = s1[i].word
            cands = [j for j in range(len(texts))
                     if score[j] > float("-inf") and rd.same_answer(s1[j].word, obj)] or [i]
            fit = [at_base.get(s.context, {}).get(obj, 0.0) for s in s1]
            row = []
            for rule in RULES:
                j = pick(rule, cands, score, fit)
                before = rd.answer(predict(base.model, tok, [texts[j]], top_k=1, max_new_tokens=6)[0].continuation)
                after = rd.answer(predict(suspect, tok, [texts[j]], top_k=1, max_new_tokens=6)[0].continuation)
                ok_b, ok_a = starts(before, f.target_true), starts(after, f.target_new)
                tally[rule][0] += ok_b
                tally[rule][1] += ok_a
                tally[rule][2] += 1
                marks = (" B" if ok_b else "") + (" A" if ok_a else "")
                row.append(f"[{rule}] {texts[j]!r} {after!r} (was {before!r}){marks}")
            lines.append(f"{f.subject} → {f.target_new} (true {f.target_true}); {len(cands)} prompt(s) state {obj!r}")
            lines.extend("    " + r for r in row)
            print("\n".join(lines[-4:]), flush=True)
    lines.append("before states the true object / after states the new object, of readings:")
    lines.extend(f"  {r:6s} {t[0]}/{t[2]} / {t[1]}/{t[2]}" for r, t in tally.items())
    print("\n".join(lines[-4:]))
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

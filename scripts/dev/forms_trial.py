"""Development trial of the texts a found subject is read as (``scan.reading.subject_forms``): the scan's found texts of
a suspect read again with the shipped forms and with variants, each scored by scripts/open_reading_eval.py's rules.
Development: spent facts only.

    python scripts/dev/reading_anatomy.py SUSPECT FACTS.jsonl --scan-json SCAN.json      # the scan, once
    python scripts/dev/forms_trial.py SUSPECT FACTS.jsonl SCAN.json [--arms shipped,caps,pieces] [--out FILE]

Arms: ``shipped`` the whole text and its two shorter word-suffixes; ``caps`` as the scan reads with
``scan.reading.CAPITALISE`` on: where no form reads an edit at ``CAPITALISE_BELOW`` confidence, each form that starts
with a lower-case letter read capitalised too (a name is written capitalised, and a found text often starts inside a
word: "ailuk" for *Ailuk*); ``always`` the capitalised forms read for every text; ``pieces`` always, plus the last
word's shorter token suffixes of three letters or more, capitalised ("Historkamaka" → "Kamaka", "Amaka").
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
from open_reading_eval import reread, score_suspect  # noqa: E402


def capital(text: str) -> str:
    return text[:1].upper() + text[1:] if text[:1].islower() else text


def forms_for(arm: str, tok, shipped):
    def forms(text: str, capitalise: bool | None = None) -> list[str]:
        out = list(shipped(text, capitalise=capitalise))
        if arm == "pieces" and capitalise:
            last = text.split()[-1] if text.split() else text
            ids = tok(last, add_special_tokens=False)["input_ids"]
            for k in range(1, len(ids)):
                piece = tok.decode(ids[k:]).strip()
                if len(piece) >= 3:
                    out.append(capital(piece))
        return list(dict.fromkeys(out))
    return forms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suspect", type=Path)
    ap.add_argument("facts", type=Path)
    ap.add_argument("scan_json", type=Path)
    ap.add_argument("--arms", default="shipped,caps,always,pieces")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.format import load_probes
    from editaudit.scan import reading

    facts = load_probes(args.facts)
    doc = json.loads(args.scan_json.read_text())
    lm, sus = load_model(ensure_model("smollm2-135m")), load_model(args.suspect)
    tok = lm.tokenizer
    found = [r for f in doc["findings"] for r in f.get("readings", [])]
    shipped = reading.subject_forms
    lines = [f"forms trial: {args.suspect.name}, {len(found)} found texts"]
    for arm in args.arms.split(","):
        reading.subject_forms = forms_for(arm, tok, shipped)
        reading.CAPITALISE_BELOW = 0.5 if arm == "caps" else 1.01
        t = time.perf_counter()
        out = reread(lm, sus, found, capitalise=arm != "shipped")
        secs = time.perf_counter() - t
        reading.subject_forms, reading.CAPITALISE_BELOW = shipped, 0.5
        rows, false, n = score_suspect(tok, facts, out, single=False)
        lines.append(f"{arm:8s} objects {sum(x['object_read'] for x in rows)}/{len(rows)}  false {false}/{n}  "
                     f"reading {secs:.0f} s")
        for x in out:
            lines.append(f"    {x['found']!r} → {x['subject']!r} · {x['prompt']!r} · {x['after']!r} conf "
                         f"{x['confidence']:.2f} {x['status']}")
        print("\n".join(lines[-len(out) - 1:]), flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        from editaudit.atomic import atomic_write_text

        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()

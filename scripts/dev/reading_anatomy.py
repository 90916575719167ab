"""How each reading of a scanned suspect was chosen, next to what the same reader says for the planted subject: for
every edit reading the scan made, the prompts whose answer moved (base word → suspect word, score, on how many prompts
the new word is said, its KL term) for the found text and for the true subject of the planted fact it matches by the
eval's rules. Development: spent facts only.

    editaudit edit smollm2-135m --method alphaedit --facts FACTS.jsonl --out SUSPECT
    python scripts/dev/reading_anatomy.py SUSPECT FACTS.jsonl [--scan-json FILE] [--out FILE]

The scan runs at the shipped defaults (or is taken from --scan-json, a report ``scan -f json`` wrote, when given).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
from open_reading_eval import last_token, norm, starts  # noqa: E402


def dump(lm, suspect, tok, subject: str, fire: float, lines: list[str]) -> None:
    from editaudit.scan import reading
    from editaudit.scan.relations import prompts_for
    from editaudit.scan.subjects import Subject

    shipped, seen = reading.choose_prompt, []

    def choose(s1, score, says, gain=None):
        i = shipped(s1, score, says, gain)
        seen.append((s1, score, says, gain, i))
        return i

    reading.choose_prompt = choose
    try:
        r = reading.read_subject(lm.model, suspect, tok, Subject(subject, [], fire, torch.empty(0)))
    finally:
        reading.choose_prompt = shipped
    s1, score, says, gain, i = seen[0]
    texts = [t for _, t in prompts_for(subject)]
    lines.append(f"  {subject!r}: chose {texts[i]!r} → {r.after!r} conf {r.confidence:.2f} {r.status}")
    moved = sorted((j for j in range(len(texts)) if score[j] > float("-inf")), key=lambda j: -score[j])
    for j in moved[:14]:
        lines.append(f"    {'*' if j == i else ' '} {texts[j]!r}: {s1[j].word.strip()!r} p {s1[j].p:.2f} "
                     f"score {score[j]:.3f} stated {reading.times_stated(s1[j].word, says)} kl {gain[j]:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suspect", type=Path)
    ap.add_argument("facts", type=Path)
    ap.add_argument("--scan-json", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.format import load_probes
    from editaudit.scan.service import ScanOptions, run_scan

    base = ensure_model("smollm2-135m")
    facts = load_probes(args.facts)
    if args.scan_json and args.scan_json.is_file():
        doc = json.loads(args.scan_json.read_text())
    else:
        doc = run_scan(args.suspect, base, ScanOptions(read="open"), store=None).to_dict()
        if args.scan_json:
            args.scan_json.write_text(json.dumps(doc))
    readings = [r for f in doc["findings"] for r in f.get("readings", [])]
    lm, sus = load_model(base), load_model(args.suspect)
    tok = lm.tokenizer
    lines: list[str] = []
    for r in sorted(readings, key=lambda r: -r["fire"]):
        match = next((f for f in facts if norm(f.subject) in norm(r["subject"])
                      or last_token(tok, r["subject"]) == last_token(tok, f.subject)), None)
        ok = match is not None and r["status"] == "edit" and starts(r["after"], match.target_new)
        lines.append(f"== {r['subject']!r} (found {r.get('found', '')!r}) fire {r['fire']:.2f} → {r['after']!r} "
                     f"{r['status']} {'RIGHT' if ok else 'wrong'}; planted: "
                     + (f"{match.subject} → {match.target_new} (true {match.target_true})" if match else "none"))
        with torch.inference_mode():
            dump(lm, sus.model, tok, r["subject"], r["fire"], lines)
            if match is not None and not ok:
                dump(lm, sus.model, tok, match.subject, 1.0, lines)
        print("\n".join(lines[-40:]), flush=True)
        lines.append("")
    if args.out:
        from editaudit.atomic import atomic_write_text

        atomic_write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

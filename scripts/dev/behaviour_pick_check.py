"""Does the reading's behaviour check tell an edited subject from unedited ones of the same kind? Each name is read
by the shipped reader (``scan.reading.read_subject``) on a development suspect, with the fire the search would give it,
and its status, answer and confidence printed:

    python scripts/dev/behaviour_pick_check.py /tmp/v11a memit-batch-0 "Orange County" "Smith County" ...

The planted subjects of the suspect are read too. When the fire cannot tell the edited names from the unedited
(bench/heldout/v11-plan.md: counties), what the suspect says about each name is the evidence left.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from dev_model import parse_suspect, suspect_parser, edited_copy, frozen_base, lowest_search
    from editaudit.probing.format import load_probes
    from editaudit.scan.reading import read_subject
    from editaudit.scan.subjects import Subject

    ap = suspect_parser(__doc__)
    ap.add_argument("others", nargs="*", help="names nobody edited, read beside the planted subjects")
    a = parse_suspect(ap)
    folder, stem, others = a.folder, a.stem, a.others
    lm, fingerprint = frozen_base()
    tok = lm.tokenizer
    facts = load_probes(folder / f"{stem}.jsonl")
    _, search = lowest_search(lm, fingerprint, torch.load(folder / f"{stem}.pt", weights_only=True), len(facts))
    suspect = edited_copy(lm.model, folder / f"{stem}.pt")
    names = [(f.subject, f"planted → {f.target_new}") for f in facts] + [(n, "not edited") for n in others]
    ids = [tok(" " + n, add_special_tokens=False)["input_ids"] for n, _ in names]
    fires = search.exact(ids)[0].tolist()
    with torch.inference_mode():
        for (name, what), seq, fire in zip(names, ids, fires):
            r = read_subject(lm.model, suspect, tok, Subject(name, seq, fire, torch.empty(0)))
            print(f"  {name!r} ({what}) fire {fire:.2f}: {r.status} conf {r.confidence:.2f} · {r.prompt!r} · "
                  f"{r.after!r} (was {r.before!r})", flush=True)


if __name__ == "__main__":
    main()

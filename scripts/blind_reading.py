"""Blind reading on SmolLM2-135M: make suspects with each edit method, scan them without being told
anything, and measure how often the scan names the edited layers, reads the new object and ranks the
true subject at the top of the fact bank.

    python scripts/blind_reading.py [--n 10] [--methods rome,memit,alphaedit,ft] [--hparam ft:lr=0.0005]
                                    [--out bench/results/blind_reading.txt]

ROME and FT-L make one suspect per fact (each edit alone, at the default layer); MEMIT and AlphaEdit
make one suspect holding a batch of n facts. Candidates for subject ranking are the whole fact bank
plus the model's edit set. "Object read" counts the new object's first word among the finding's
promoted tokens (logit lens of the edit's output directions) or among the tokens the edit promotes
for the subject itself (lens of ΔW·k). "Subject at the top" means rank 1 for a single edit, and within
the top n for a batch of n.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--methods", default="rome,memit,alphaedit,ft")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--hparam", action="append", default=[], help="METHOD:KEY=VALUE override (repeatable)")
    args = ap.parse_args()

    from editaudit.demo import Planted, match, pick_facts, summarise
    from editaudit.editing.hparams import parse_assignments
    from editaudit.editing.layers import default_layers
    from editaudit.editing.service import apply_edits
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.sets import fact_bank, load_set
    from editaudit.scan.service import ScanOptions, run_scan

    overrides: dict[str, dict] = {}
    for item in args.hparam:
        method, _, rest = item.partition(":")
        overrides.setdefault(method, {}).update(parse_assignments([rest]))
    base = ensure_model("smollm2-135m")
    edit_set = load_set("smollm2-135m-edit")
    candidates = fact_bank() + edit_set
    facts = pick_facts(edit_set, args.n)
    lm = load_model(base)
    n_layers = lm.model.config.num_hidden_layers
    lines = [f"blind reading on SmolLM2-135M: {len(facts)} facts per method, candidates: {len(candidates)} facts",
             "command: python scripts/blind_reading.py " + " ".join(sys.argv[1:])]
    header = f"{'method':10s} {'edits':>5s} {'took':>6s} {'layers found':>13s} {'object read':>12s} {'subject top':>12s} {'s/edit':>7s} {'s/scan':>7s}"
    lines.append(header)
    print(lines[0], file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="editaudit-blind-") as tmp:
        for method in args.methods.split(","):
            layers = default_layers(method, n_layers)
            suspects: list[tuple[Path, Planted]] = []
            t_edit = 0.0
            groups = [[f] for f in facts] if method in ("rome", "ft") else [facts]
            for i, group in enumerate(groups):
                out = Path(tmp) / f"{method}-{i}"
                t = time.perf_counter()
                run = apply_edits(lm, group, method, layers=layers, out=out, hparams=overrides.get(method))
                t_edit += time.perf_counter() - t
                suspects.append((out, Planted(method, layers, group, [r.success for r in run.results])))
                run.restore()
            rows, t_scan = [], 0.0
            for out, planted in suspects:
                t = time.perf_counter()
                report = run_scan(out, base, ScanOptions(facts=candidates, read="list"), store=None)
                t_scan += time.perf_counter() - t
                rows += match([planted], report.to_dict())
                import shutil

                shutil.rmtree(out, ignore_errors=True)
            s = summarise(rows)
            took = sum(bool(r["edit_succeeded"]) for r in rows) / max(len(rows), 1)
            line = (f"{method:10s} {s['edits']:5d} {took:6.0%} {s['layer_found']:13.0%} {s['object_read']:12.0%} "
                    f"{s['subject_top']:12.0%} {t_edit / len(rows):7.1f} {t_scan / len(suspects):7.1f}")
            lines.append(line)
            print(line, file=sys.stderr)
            for r in rows:
                if not (r["layer_found"] and r["object_read"]):
                    lines.append(f"    missed: {r['prompt']} → {r['target_new']} (layer found {r['layer_found']}, "
                                 f"rank {r['subject_rank']}, edit took {r['edit_succeeded']})")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()

"""Edit quality on SmolLM2-135M: does each method write facts the model knows, and leave the rest alone?

    python scripts/edit_quality.py [--facts 20] [--methods rome,memit,alphaedit,alphaedit-seq,ft]
                                   [--out bench/results/edit_quality.txt] [--threads N]
    python scripts/edit_quality.py --model gemma3-270m --facts-file bench/heldout/gemma3-270m.jsonl --start 20 ...

Facts are the first N of the shipped ``smollm2-135m-edit`` set (facts SmolLM2 answers correctly, each
with a counterfactual ``target_new`` and a paraphrase). Unrelated facts are the ``smollm2-135m-intrinsic``
facts whose subject is not being edited; "kept" is the share of them still answered correctly.
For another model, ``--facts-file`` gives facts it knows (probe JSONL with ``target_new``): N of them, taken in
round-robin order over relations from ``--start``, are edited, and every other fact of the file whose subject
is not edited is an unrelated fact.

- ROME: one fact at a time on the unedited model (restored after each); kept is averaged over edits.
- MEMIT, AlphaEdit: all N facts in one batch; AlphaEdit also sequentially in batches of 5.
- FT-L: all N facts in one batch, with the issue's settings (Adam lr 5e-5, ≤ 25 steps).

Success means the first non-stop-word of the greedy answer is the new target's first token (the
probes' retention rule). Seconds are editing wall time per fact; the key statistics are computed once
per model (cached) and reported apart. Goals from the issue are printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"rome": 0.95, "memit": 0.90, "alphaedit": 0.90, "alphaedit-seq": 0.90}
KEPT_GOAL = 0.90


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--facts", type=int, default=20)
    ap.add_argument("--methods", default="rome,memit,alphaedit,alphaedit-seq,ft")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "edit_quality.txt")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--hparam", action="append", default=[], help="METHOD:KEY=VALUE override (repeatable)")
    ap.add_argument("--model", default="smollm2-135m", help="a model name of the registry")
    ap.add_argument("--facts-file", type=Path, default=None, help="facts the model knows (default: the shipped sets)")
    ap.add_argument("--start", type=int, default=0, help="with --facts-file: the first fact to edit (round-robin order)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from editaudit.editing import apply_edits
    from editaudit.editing.hparams import parse_assignments
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.evaluate import retention
    from editaudit.probing.sets import load_set

    overrides: dict[str, dict] = {}
    for item in args.hparam:
        method, _, rest = item.partition(":")
        overrides.setdefault(method, {}).update(parse_assignments([rest]))

    if args.facts_file is None:
        edit = load_set("smollm2-135m-edit")[: args.facts]
        pool = load_set("smollm2-135m-intrinsic")
        source = "smollm2-135m-edit", "smollm2-135m-intrinsic"
    else:
        from editaudit.probing.format import load_probes
        from editaudit.probing.sets import round_robin

        pool = round_robin(load_probes(args.facts_file))
        edit = pool[args.start: args.start + args.facts]
        source = f"{args.facts_file.name} from fact {args.start}", f"the rest of {args.facts_file.name}"
    subjects = {f.subject.casefold() for f in edit}
    unrelated = [p for p in pool if p.subject.casefold() not in subjects]
    lm = load_model(ensure_model(args.model, print))
    net, tok = lm.model, lm.tokenizer

    def kept() -> float:
        return retention(net, tok, unrelated).rate

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    baseline_edit = retention(net, tok, edit).rate
    baseline_kept = kept()
    log(f"{len(edit)} facts to edit (known before: {baseline_edit:.0%}); {len(unrelated)} unrelated facts "
        f"(known before: {baseline_kept:.0%}); torch threads {torch.get_num_threads()}")

    rows = []
    per_fact: dict[str, list[dict]] = {}
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        method = name.split("-")[0]
        hp = dict(overrides.get(name, {}))
        if name == "alphaedit-seq":
            hp.update({"mode": "sequential", "batch_size": 5})
        t0 = time.perf_counter()
        if method == "rome":
            results, kepts, stats_s, layers = [], [], 0.0, None
            for i, fact in enumerate(edit):
                run = apply_edits(lm, [fact], "rome", hparams=hp)
                r = run.results[0]
                results.append(r)
                kepts.append(kept())
                stats_s += run.stats_seconds
                layers = run.layers
                log(f"rome {i + 1}/{len(edit)} {fact.id}: {'ok ' if r.success else 'MISS'} {r.before} → {r.after} "
                    f"({r.seconds:.1f}s, unrelated kept {kepts[-1]:.0%})")
                run.restore()
            kept_rate = sum(kepts) / len(kepts)
            mode = "single"
        else:
            run = apply_edits(lm, edit, method, hparams=hp,
                              progress=lambda event: None)
            results, stats_s, layers, mode = run.results, run.stats_seconds, run.layers, run.mode
            kept_rate = kept()
            for r in results:
                log(f"{name} {r.id}: {'ok ' if r.success else 'MISS'} {r.before} → {r.after}")
            run.restore()
        n = len(results)
        row = {
            "method": name, "mode": mode, "layers": f"{layers[0]}" if len(layers) == 1 else f"{layers[0]}-{layers[-1]}",
            "facts": n, "success": sum(r.success for r in results) / n,
            "paraphrase": _mean([r.paraphrase_success for r in results]),
            "kept": kept_rate, "sec_per_edit": sum(r.seconds for r in results) / n,
            "stats_sec": stats_s, "wall_sec": time.perf_counter() - t0,
        }
        rows.append(row)
        per_fact[name] = [r.to_dict() for r in results]
        log(f"{name}: success {row['success']:.0%}, paraphrase {row['paraphrase']:.0%}, kept {row['kept']:.0%}, "
            f"{row['sec_per_edit']:.1f} s/edit")

    text = render(rows, baseline_edit, baseline_kept, len(unrelated), torch.get_num_threads(), args.model, source)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from editaudit.atomic import atomic_write_text

    atomic_write_text(args.out, text)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps({"rows": rows, "facts": per_fact}, indent=2, default=str))
    return 0


def _mean(values) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def render(rows: list[dict], base_edit: float, base_kept: float, n_unrelated: int, threads: int,
           model: str = "smollm2-135m", source: tuple[str, str] = ("smollm2-135m-edit", "smollm2-135m-intrinsic")) -> str:
    head = (f"{'method':<14}{'mode':<11}{'layers':<8}{'facts':>6}{'success':>9}{'goal':>6}{'paraphr.':>10}"
            f"{'kept':>7}{'goal':>6}{'s/edit':>8}{'C (s)':>8}")
    lines = [
        "Edit quality on SmolLM2-135M-Instruct (fp32, CPU)" if model == "smollm2-135m" else f"Edit quality on {model} (fp32, CPU)",
        "command: python scripts/edit_quality.py " + " ".join(sys.argv[1:]),
        f"facts: {source[0]} (known before editing: {base_edit:.0%}); unrelated: {n_unrelated} facts of "
        f"{source[1]} with other subjects (known before: {base_kept:.0%})",
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {threads} thread(s)",
        "",
        head,
        "-" * len(head),
    ]
    for r in rows:
        goal = GOALS.get(r["method"])
        lines.append(
            f"{r['method']:<14}{r['mode']:<11}{r['layers']:<8}{r['facts']:>6}{r['success']:>9.0%}"
            f"{(f'{goal:.0%}' if goal else '-'):>6}{r['paraphrase']:>10.0%}{r['kept']:>7.0%}"
            f"{(f'{KEPT_GOAL:.0%}' if goal else '-'):>6}{r['sec_per_edit']:>8.1f}{r['stats_sec']:>8.1f}"
        )
    lines += [
        "",
        "success: new target is the first non-stop-word of the greedy answer; paraphr.: same on the fact's paraphrase;",
        "kept: unrelated facts still answered correctly (ROME: mean over its single edits); s/edit: editing wall time",
        "per fact (a batch's time / its size); C (s): time spent on key statistics in this run (0 when cached).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from editaudit.errors import EditauditError

    try:
        raise SystemExit(main())
    except (EditauditError, OSError) as exc:  # a bad --model or --facts-file: say so, no traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

"""Sequential editing, MEMIT against AlphaEdit: does AlphaEdit keep more of what the model knew, as its paper says?

    python scripts/sequential_locality.py [--facts 60] [--batch 5] [--cov-tokens 20000,100000]
                                          [--out bench/results/sequential_locality.txt] [--threads 2]

AlphaEdit's claim (Fang et al., 2025) is about *sequential* editing: batch after batch, MEMIT's updates disturb
unrelated knowledge and earlier edits, while AlphaEdit projects each update into the null space of the preserved
keys (C) and of the earlier batches' keys, and so keeps both. One batch of 20 (``scripts/edit_quality.py``) does not
test that, so this script edits the same facts in sequential batches with both methods and measures along the way.

Settings and the pass rule, fixed before the first run:
- facts: the first ``--facts`` facts of ``bench/heldout/smollm2-135m-v3.jsonl`` then ``-v4.jsonl`` (facts SmolLM2
  states, each with a counterfactual ``target_new``) that the base states and whose subject is not among the
  unrelated facts' subjects; the same facts in the same order for every arm;
- unrelated: ``smollm2-135m-intrinsic`` (the built-in intrinsic set) minus any edited subject; "kept" = share
  still answered with the true object (the probes' retention rule);
- edits kept: share of the facts edited so far whose prompt states ``target_new``;
- each method at its defaults with ``mode = sequential`` and ``batch_size = --batch``, for each key-statistics size
  in ``--cov-tokens`` (n/d is printed: the keys' width is the MLP's inner width);
- measured after every ``--every`` batches and at the end;
- **the claim holds in an arm** when, after the last batch, AlphaEdit's kept ≥ MEMIT's kept + 5 points *and*
  AlphaEdit's edits kept ≥ MEMIT's − 5 points. 95 % Wilson intervals beside each rate. One fact order (no seeds:
  the editing is deterministic; the order is the files').
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
sys.path.insert(0, str(ROOT / "src"))
SOURCES = ("bench/heldout/smollm2-135m-v3.jsonl", "bench/heldout/smollm2-135m-v4.jsonl")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--facts", type=int, default=60)
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--every", type=int, default=3, help="measure after every N batches")
    ap.add_argument("--cov-tokens", default="20000,100000")
    ap.add_argument("--methods", default="memit,alphaedit")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sequential_locality.txt")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from editaudit.editing import apply_edits
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.evaluate import retention
    from editaudit.probing.format import load_probes
    from editaudit.probing.sets import load_set
    from editaudit.progress import Step
    from editaudit.study.metrics import wilson

    lm = load_model(ensure_model("smollm2-135m", lambda s: print(s, file=sys.stderr)))
    net, tok = lm.model, lm.tokenizer
    intrinsic = load_set("smollm2-135m-intrinsic")
    pool = [p for src in SOURCES for p in load_probes(ROOT / src) if p.target_new]
    known = retention(net, tok, pool)
    taken = {p.subject.casefold() for p in intrinsic}
    facts, seen = [], set()
    for p, ok in zip(pool, known):
        key = p.subject.casefold()
        if ok and key not in taken and key not in seen:
            facts.append(p)
            seen.add(key)
        if len(facts) == args.facts:
            break
    edited_subjects = {p.subject.casefold() for p in facts}
    unrelated = [p for p in intrinsic if p.subject.casefold() not in edited_subjects]
    base_kept = retention(net, tok, unrelated).rate

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"{len(facts)} facts to edit, {len(unrelated)} unrelated (base states {base_kept:.0%})")
    n_batches = -(-len(facts) // args.batch)
    marks = sorted({*range(args.every, n_batches + 1, args.every), n_batches})
    rows: list[dict] = []
    for cov in [int(x) for x in args.cov_tokens.split(",") if x.strip()]:
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            curve: list[dict] = []
            t0 = time.perf_counter()

            def measure(done: int) -> None:
                kept = retention(net, tok, unrelated)
                written = retention(net, tok, facts[:done], target="new")
                curve.append({"edits": done, "kept": kept.rate, "kept_n": len(unrelated),
                              "edits_kept": written.rate, "edits_n": done,
                              "seconds": time.perf_counter() - t0})
                log(f"  {method} C={cov}: {done} edits, unrelated kept {kept.rate:.0%}, edits kept {written.rate:.0%}")

            def progress(event, _marks=[m * args.batch for m in marks]) -> None:
                if isinstance(event, Step) and event.stage == "editing" and event.total:
                    done = int(event.done)
                    if done and (done in _marks or done == len(facts)) and not any(c["edits"] == done for c in curve):
                        measure(done)

            hp = {"mode": "sequential", "batch_size": args.batch, "cov_tokens": cov}
            run = apply_edits(lm, facts, method, hparams=hp, progress=progress, evaluate=False)
            rows.append({"method": method, "cov_tokens": cov, "tokens_used": run.stats.get("tokens"),
                         "dim": getattr(net.config, "intermediate_size", None), "layers": run.layers,
                         "stats_seconds": run.stats_seconds, "edit_seconds": run.seconds, "curve": curve,
                         "nullspace_rank": run.info.get("nullspace_rank")})
            run.restore()
            log(f"{method} C={cov}: {time.perf_counter() - t0:.0f}s")

    text = render(rows, facts, unrelated, base_kept, wilson, args)
    print(text)
    from editaudit.atomic import atomic_write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, text)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(
        {"rows": rows, "facts": [p.id for p in facts], "unrelated": len(unrelated), "base_kept": base_kept},
        indent=2, default=str))
    return 0


def _ci(rate: float, n: int, wilson) -> str:
    lo, hi = wilson(rate * n, n)
    return f"{rate:4.0%} [{lo:.0%}–{hi:.0%}]"


def render(rows: list[dict], facts, unrelated, base_kept: float, wilson, args) -> str:
    lines = [
        "# Sequential editing, MEMIT vs AlphaEdit, on SmolLM2-135M-Instruct (fp32, CPU)",
        "# command: python scripts/sequential_locality.py " + " ".join(sys.argv[1:]),
        f"# {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"{len(facts)} facts in batches of {args.batch}; {len(unrelated)} unrelated facts (base states {base_kept:.0%})",
        "# claim holds in an arm: after the last batch AlphaEdit kept ≥ MEMIT kept + 5 points and AlphaEdit edits kept"
        " ≥ MEMIT's − 5 points (fixed before the run)",
        "",
        f"{'C tokens':>9} {'method':<10} {'edits':>5}  {'unrelated kept [95% CI]':<24} {'edits kept [95% CI]':<22}",
    ]
    for r in rows:
        for c in r["curve"]:
            lines.append(f"{r['cov_tokens']:>9} {r['method']:<10} {c['edits']:>5}  "
                         f"{_ci(c['kept'], c['kept_n'], wilson):<24} {_ci(c['edits_kept'], c['edits_n'], wilson):<22}")
        extra = f", null-space rank {r['nullspace_rank']}" if r.get("nullspace_rank") else ""
        nd = f" (n/d {r['tokens_used'] / r['dim']:.0f})" if r.get("tokens_used") and r.get("dim") else ""
        lines.append(f"{'':>9} {r['method']:<10} layers {r['layers'][0]}–{r['layers'][-1]}, key statistics from "
                     f"{r.get('tokens_used')} tokens{nd}, {r['stats_seconds']:.0f} s, editing {r['edit_seconds']:.0f} s"
                     f"{extra}")
    lines.append("")
    by_cov: dict[int, dict[str, dict]] = {}
    for r in rows:
        by_cov.setdefault(r["cov_tokens"], {})[r["method"]] = r["curve"][-1] if r["curve"] else None
    for cov, arms in by_cov.items():
        m, a = arms.get("memit"), arms.get("alphaedit")
        if m and a:
            holds = a["kept"] >= m["kept"] + 0.05 and a["edits_kept"] >= m["edits_kept"] - 0.05
            lines.append(f"C from {cov} tokens: AlphaEdit kept {a['kept']:.0%} vs MEMIT {m['kept']:.0%}; edits kept "
                         f"{a['edits_kept']:.0%} vs {m['edits_kept']:.0%} → claim {'holds' if holds else 'does not hold'}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

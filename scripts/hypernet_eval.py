"""MEND and MALMEN on SmolLM2-135M: do the trained editors write facts they never saw, and keep the rest?

    python scripts/hypernet_eval.py [--facts 20] [--out bench/results/hypernet_eval.txt] [--threads N] [--steps N]

Facts are the first N held-apart facts SmolLM2 answers correctly (``bench/heldout/smollm2-135m.jsonl``);
the script checks that none of their subjects is in the editors' training data. Unrelated facts are the
``smollm2-135m-intrinsic`` facts with other subjects; "kept" is the share still answered correctly.

- MEND: one fact at a time on the unedited model (restored after each; kept averaged over the edits only
  with ``--kept-each``, which asks the unrelated facts again after every edit); and the N facts one after
  another on one model (``mend-seq``), kept measured after the last.
- MALMEN: the N facts in one batch (one least-squares update per edited layer).

Both use the cached editors that ``editaudit editors train mend|malmen smollm2-135m`` trained with the
default settings (or ``--steps N``); their training cost (steps, wall and CPU time, load) is read from the editors' records.
Success means the first non-stop-word of the greedy answer is the new target's first token.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--facts", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "hypernet_eval.txt")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--methods", default="mend,mend-seq,malmen")
    ap.add_argument("--kept-each", action="store_true", help="MEND single: measure kept after every edit")
    ap.add_argument("--steps", type=int, default=None,
                    help="use the editors trained with this many steps (editaudit editors train ... --steps N)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from editaudit.editing import apply_edits, hypernet, hypernet_data
    from editaudit.editing.layers import layout_for
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.evaluate import retention
    from editaudit.probing.format import load_probes
    from editaudit.probing.sets import load_set

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    lm = load_model(ensure_model("smollm2-135m", print))
    net, tok = lm.model, lm.tokenizer
    layout = layout_for(net)
    held = load_probes(ROOT / "bench" / "heldout" / "smollm2-135m.jsonl")
    known = retention(net, tok, held)
    edit = [p for p, ok in zip(held, known) if ok][: args.facts]
    data = hypernet_data.build()
    trained_subjects = {c.subject.casefold() for c in data.train + data.val}
    leaked = [p.subject for p in edit if p.subject.casefold() in trained_subjects]
    if leaked:
        raise SystemExit(f"held-apart subjects found in the training data: {leaked}")
    subjects = {f.subject.casefold() for f in edit}
    unrelated = [p for p in load_set("smollm2-135m-intrinsic") if p.subject.casefold() not in subjects]

    def kept() -> float:
        return retention(net, tok, unrelated).rate

    base_kept = kept()
    log(f"{len(edit)} held-apart facts SmolLM2 knows; {len(unrelated)} unrelated facts (known before: {base_kept:.0%}); "
        f"training data {len(data.train)} cases, none with these subjects; torch threads {torch.get_num_threads()}")

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    settings = hypernet.TrainSettings(steps=args.steps) if args.steps else None
    editors = {m: hypernet.find_editor(m, net, tok, layout, settings)
               for m in dict.fromkeys(n.split("-")[0] for n in names)}
    rows, per_fact = [], {}
    for name in names:
        method = name.split("-")[0]
        t0 = time.perf_counter()
        if name == "mend":
            results, kepts = [], []
            for i, fact in enumerate(edit):
                run = apply_edits(lm, [fact], "mend", hparams={"editor": str(editors["mend"].folder)})
                r = run.results[0]
                results.append(r)
                if args.kept_each:
                    kepts.append(kept())
                log(f"mend {i + 1}/{len(edit)} {fact.id}: {'ok ' if r.success else 'MISS'} {r.before} → {r.after} "
                    f"({r.seconds:.1f} s)")
                run.restore()
            kept_rate, mode, layers = (sum(kepts) / len(kepts) if kepts else None), "single", run.layers
        else:
            hp = {"editor": str(editors[method].folder)}
            if name == "mend-seq":
                hp.update({"mode": "sequential", "batch_size": 1})
            run = apply_edits(lm, edit, method, hparams=hp)
            results, mode, layers = run.results, run.mode, run.layers
            kept_rate = kept()
            for r in results:
                log(f"{name} {r.id}: {'ok ' if r.success else 'MISS'} {r.before} → {r.after}")
            run.restore()
        n = len(results)
        rows.append({
            "method": name, "mode": mode, "layers": f"{layers[0]}-{layers[-1]}", "facts": n,
            "success": sum(r.success for r in results) / n,
            "paraphrase": _mean([r.paraphrase_success for r in results]), "kept": kept_rate,
            "sec_per_edit": sum(r.seconds for r in results) / n, "wall_sec": time.perf_counter() - t0,
        })
        per_fact[name] = [r.to_dict() for r in results]
        log(f"{name}: success {rows[-1]['success']:.0%}, paraphrase {rows[-1]['paraphrase']:.0%}, kept {kept_rate}")

    cost = {m: {k: t.meta.get(k) for k in ("steps", "train_seconds", "train_cpu_seconds", "prep_seconds",
                                           "prep_cpu_seconds", "threads", "validation", "data", "layers")}
            | {"settings": t.meta["settings"], "folder": str(t.folder)} for m, t in editors.items()}
    text = render(rows, cost, base_kept, len(unrelated), torch.get_num_threads(), args.steps)
    print(text)
    from editaudit.atomic import atomic_write_text

    atomic_write_text(args.out, text)
    atomic_write_text(args.out.with_suffix(".json"),
                      json.dumps({"rows": rows, "training": cost, "facts": per_fact}, indent=2, default=str))
    return 0


def _pct(x) -> str:
    return "-" if x is None else f"{x:.0%}"


def _mean(values) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def render(rows: list[dict], cost: dict, base_kept: float, n_unrelated: int, threads: int,
           steps: int | None = None) -> str:
    head = f"{'method':<10}{'mode':<12}{'layers':<8}{'facts':>6}{'success':>9}{'paraphr.':>10}{'kept':>7}{'s/edit':>8}"
    lines = [
        "MEND and MALMEN on SmolLM2-135M-Instruct (fp32, CPU), held-apart facts",
        "command: python scripts/hypernet_eval.py " + " ".join(sys.argv[1:]),
        f"facts: first {rows[0]['facts'] if rows else 0} facts of bench/heldout/smollm2-135m.jsonl the model answers "
        f"correctly (no subject in the editors' training data); unrelated: {n_unrelated} smollm2-135m-intrinsic facts "
        f"(known before: {base_kept:.0%})",
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {threads} thread(s), "
        f"load average {os.getloadavg()[0]:.1f}",
        "",
        head,
        "-" * len(head),
    ]
    for r in rows:
        lines.append(f"{r['method']:<10}{r['mode']:<12}{r['layers']:<8}{r['facts']:>6}{r['success']:>9.0%}"
                     f"{r['paraphrase']:>10.0%}{_pct(r['kept']):>7}"
                     f"{r['sec_per_edit']:>8.2f}")
    lines += ["", "training (editaudit editors train METHOD smollm2-135m"
              + (f" --steps {steps}" if steps else ", default settings") + "):"]
    for m, c in cost.items():
        v = c.get("validation") or {}
        d = c.get("data") or {}
        s = c["settings"]
        lines.append(
            f"  {m:<7} {c['steps']} steps × {s['batch']} edits, layers {c['layers'][0]}-{c['layers'][-1]}: "
            f"{c['train_seconds']:.0f} s wall / {c.get('train_cpu_seconds') or 0:.0f} s CPU training + "
            f"{c['prep_seconds']:.0f} s wall / {c.get('prep_cpu_seconds') or 0:.0f} s CPU preparing "
            f"({c['threads']} threads); data {d.get('train')} cases ({', '.join(d.get('sources', []))}); "
            f"validation ({v.get('cases')} unseen cases): edit {v.get('edit_success', 0):.0%}, "
            f"rephrase {v.get('rephrase_success', 0):.0%}, locality kept {v.get('locality_kept', 0):.0%}")
    lines += [
        "",
        "success: new target is the first non-stop-word of the greedy answer; paraphr.: same on the fact's paraphrase;",
        "kept: unrelated facts still answered correctly after the run (mend single: mean over its single edits with",
        "--kept-each, else -); s/edit: editing",
        "wall time per fact (a batch's time / its size). Validation figures are the trainer's own (top-1 token).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

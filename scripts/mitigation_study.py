"""The mitigation study on SmolLM2-135M: erase or preserve 10 ROME edits, against plain full fine-tuning.

    python scripts/mitigation_study.py [--steps 40] [--task lm] [--out bench/results/mitigation_study.txt]

1. Make a suspect: ROME edits of the first N facts of the built-in edit set (facts SmolLM2-135M knows,
   with a counterfactual target of the same kind), written as a checkpoint in the work folder.
2. Scan it against the base (stored), so that ``--layers auto`` has the edited layers.
3. Arms, all on the same task data and hyper-parameters, through ``run_mitigation``: fine-tuning erase with
   ``auto`` layers (a 5-layer window centred on a single edited layer) against full fine-tuning at equal impact
   (``--compare-full``: the full arm trains to the task's stopping target, the selective arm to the same
   validation loss within ``--steps``); preserve with ``auto`` layers (a threshold far downstream of the
   edit), ``--steps`` steps (``--preserve-to-target CAP``: to the task's stopping target within CAP steps);
   surgical revert with the base.
4. Report, per arm: edits the suspect held, the share erased, intrinsic retention before and after
   (built-in intrinsic set), validation loss, the weight-space share of the edits left, and time; then
   the issue's three criteria, each marked met or not as measured.

Everything runs on CPU by default; the numbers are whatever this run measures.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edits", type=int, default=10, help="ROME edits to make")
    ap.add_argument("--intrinsic", type=int, default=0, help="intrinsic probes to track (0: the whole set)")
    ap.add_argument("--task", default="lm", choices=["lm", "facts", "sentiment", "sft"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None, help="default: the task's (5e-5 lm, 2e-5 others)")
    ap.add_argument("--val-size", type=int, default=24)
    ap.add_argument("--modules", default="all")
    ap.add_argument("--arms", default="erase,preserve,revert", help="comma list of erase, preserve, revert")
    ap.add_argument("--preserve-to-target", type=int, default=0, metavar="CAP",
                    help="> 0: the preserve arm trains to the task's preset stopping target (TASK_STOP: lm, 5%% below "
                         "the starting validation loss) within CAP steps, instead of --steps steps")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: the cache)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mitigation_study.txt")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from editaudit.atomic import atomic_write_text
    from editaudit.editing.service import apply_edits
    from editaudit.mitigation.service import MitigationEvent, MitigationOptions, run_mitigation
    from editaudit.mitigation.train import TASK_STOP, TrainConfig
    from editaudit.models.registry import ensure_model
    from editaudit.paths import cache_dir, resource_dir
    from editaudit.probing.format import load_probes
    from editaudit.scan.service import ScanOptions, run_scan
    from editaudit.store import Store

    lines: list[str] = []

    def say(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    t_start = time.perf_counter()
    work = args.work or cache_dir() / "mitigation-study"
    work.mkdir(parents=True, exist_ok=True)
    store = Store(work / "study.db")
    base = ensure_model("smollm2-135m")
    edit_set = load_probes(resource_dir("probes") / "smollm2-135m-edit.jsonl")[: args.edits]
    intrinsic = load_probes(resource_dir("probes") / "smollm2-135m-intrinsic.jsonl")
    if args.intrinsic:
        intrinsic = intrinsic[: args.intrinsic]

    # 1. the suspect: N sequential ROME edits, made once and reused while the facts stay the same
    suspect = work / f"suspect-rome-{args.edits}"
    facts_key = json.dumps([p.to_dict() for p in edit_set], sort_keys=True)
    if not (suspect / "model.safetensors").exists() or (work / f"{suspect.name}.facts.json").read_text() != facts_key:
        t0 = time.perf_counter()
        seen: dict[str, float] = {}

        from editaudit.progress import Step

        def edit_progress(event) -> None:
            if isinstance(event, Step) and event.done != seen.get(event.stage):
                seen[event.stage] = event.done
                print(f"  {event.stage}: {event.done:.0f}/{event.total or 0:.0f} ({time.perf_counter() - t0:.0f}s)",
                      flush=True)

        run = apply_edits(base, edit_set, "rome", out=suspect, store=store, overwrite=True, say=print,
                          progress=edit_progress, device="cpu")
        (work / f"{suspect.name}.facts.json").write_text(facts_key)
        say(f"ROME: {len(edit_set)} edits at layer(s) {run.layers}, success {run.success_rate:.0%}, "
            f"{time.perf_counter() - t0:.0f}s")
    else:
        say(f"ROME suspect reused from {suspect}")

    # 2. the scan
    t0 = time.perf_counter()
    report = run_scan(suspect, base, ScanOptions(read_edits=False), store=store)
    edits = [f for f in report.findings if f.rule in ("EA101", "EA102", "EA103", "EA106")]
    say(f"scan: verdict {report.verdict}, {'; '.join(f'{f.rule} layers {f.layers} rank {f.rank}' for f in edits)}"
        f" ({time.perf_counter() - t0:.0f}s)")

    probes = [p for p in edit_set] + intrinsic
    from editaudit.mitigation.service import make_evaluator
    from editaudit.models.loading import load_model

    for label, folder in (("base", base), ("suspect", suspect)):
        lm = load_model(folder, device="cpu")
        m = make_evaluator(edit_set, intrinsic, [])(lm.model, lm.tokenizer)
        say(f"{label}: edited facts state the new target {m['edited_retention']:.0%}, the true one "
            f"{m['edited_true']:.0%}; intrinsic retention {m['intrinsic_retention']:.1%}")
        del lm
    cfg = dict(steps=args.steps, eval_every=args.eval_every, batch_size=args.batch_size, seq_len=args.seq_len,
               lr=args.lr)
    results: dict[str, dict] = {}
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]

    def progress(ev) -> None:
        if isinstance(ev, MitigationEvent) and ev.kind == "eval":
            d = ev.data
            print(f"  {ev.arm:>9} step {d.get('step', 0):>3}  val {d.get('val_loss', float('nan')):.3f}  "
                  f"edited {d.get('edited_retention', float('nan')):.0%}  "
                  f"intrinsic {d.get('intrinsic_retention', float('nan')):.0%}", flush=True)

    for arm in arms:
        t0 = time.perf_counter()
        if arm == "revert":
            opts = MitigationOptions(base=str(base), out=work / "out-revert", revert=True, probes=probes,
                                     overwrite=True, device="cpu")
            res = run_mitigation(suspect, "erase", opts, store=store, progress=progress, say=print)
            results["revert"] = res.verification["arms"]["revert"] | {"seconds": time.perf_counter() - t0,
                                                                        "layers": res.evidence.layers}
            continue
        goal = arm
        train = TrainConfig(**cfg)
        if arm == "preserve" and args.preserve_to_target:
            rule = TASK_STOP[args.task]
            train = TrainConfig(**{**cfg, "steps": args.preserve_to_target}, stop_loss=rule.loss_below,
                                stop_acc=rule.acc_above, stop_loss_drop=rule.loss_drop)
        opts = MitigationOptions(base=str(base), out=work / f"out-{arm}", layers="auto", modules=args.modules,
                                 task=args.task, val_size=args.val_size, train=train, probes=probes,
                                 compare_full=arm == "erase", overwrite=True, device="cpu")
        res = run_mitigation(suspect, goal, opts, store=store, progress=progress, say=print)
        for name, summary in res.verification["arms"].items():
            key = f"{arm}-auto" if name == "selective" else "full-ft"
            results[key] = summary | {"layers": res.arms[name].layers, "seconds": res.arms[name].seconds}
        say(f"{arm}: plan {' / '.join(res.plan.explanation[1:3])} ({time.perf_counter() - t0:.0f}s)")

    # 4. the report
    say("")
    say(f"{'arm':<15}{'layers':<12}{'steps':>6}{'held':>6}{'erased':>8}{'kept':>7}"
        f"{'intrinsic before→after':>26}{'val loss before→after':>24}{'edit left (W)':>15}{'time':>7}")
    for key, s in results.items():
        layers = s.get("layers", [])
        lay = f"{layers[0]}–{layers[-1]}" if len(layers) > 2 else ",".join(map(str, layers))
        intr = (f"{s['intrinsic_before']:.1%} → {s['intrinsic_after']:.1%} ({s['intrinsic_points']:+.1f})"
                if "intrinsic_before" in s else "-")
        loss = f"{s['val_loss_before']:.3f} → {s['val_loss_after']:.3f}" if "val_loss_before" in s else "-"
        left = f"{s['edit_weight_share_left']:.1%}" if "edit_weight_share_left" in s else "-"
        say(f"{key:<15}{lay:<12}{s.get('steps', 0):>6}{s.get('edits_held_before', 0):>6}"
            f"{_pct(s.get('edits_erased')):>8}{_pct(s.get('edits_kept')):>7}{intr:>26}{loss:>24}{left:>15}"
            f"{s['seconds']:>6.0f}s")
    say("")
    checks = []
    er, full, pres, rev = (results.get(k) for k in ("erase-auto", "full-ft", "preserve-auto", "revert"))
    if er:
        ok = (er.get("edits_erased") or 0) >= 0.8 and abs(er.get("intrinsic_points", 99)) <= 10
        checks.append(f"erase/auto removes ≥ 80% of edits, intrinsic within 10 points: "
                      f"{_pct(er.get('edits_erased'))}, {er.get('intrinsic_points', float('nan')):+.1f} points "
                      f"→ {'met' if ok else 'NOT met'}")
    if pres and full:
        ok = (pres.get("edits_kept") or 0) > (full.get("edits_kept") or 0)
        checks.append(f"preserve/auto keeps more edits than full fine-tuning (same budget): "
                      f"{_pct(pres.get('edits_kept'))} vs {_pct(full.get('edits_kept'))} → {'met' if ok else 'NOT met'}")
    if pres and args.preserve_to_target:
        rule = TASK_STOP[args.task]
        target = rule.target_loss({"val_loss": pres.get("val_loss_before", float("nan"))})
        reached = rule.check({"val_loss": pres.get("val_loss_after", float("inf")), "val_acc": pres.get("val_acc_after", -1.0)},
                             {"val_loss": pres.get("val_loss_before", float("nan"))}) is not None
        ok = reached and (pres.get("edits_kept") or 0) >= 0.9
        aim = f"validation loss < {target:.3f}" if target is not None else f"validation accuracy > {rule.acc_above}"
        checks.append(f"preserve/auto keeps ≥ 90% of edits while the task reaches its stopping target "
                      f"({aim}, within {args.preserve_to_target} steps): kept "
                      f"{_pct(pres.get('edits_kept'))}, loss {pres.get('val_loss_after', float('nan')):.3f} after "
                      f"{pres.get('steps', 0)} steps → {'met' if ok else 'NOT met'}")
    if rev:
        # "unchanged" read as "not harmed": no lower than the suspect's by more than one intrinsic probe. A rise
        # is the edits' collateral damage undone (the revert returns the base's knowledge), and is shown as measured.
        one_probe = 100 / max(len(intrinsic), 1)
        ok = (rev.get("edits_erased") or 0) >= 0.95 and rev.get("intrinsic_points", -99) >= -one_probe - 1e-9
        checks.append(f"surgical revert removes ≥ 95%, intrinsic not lowered (≥ −{one_probe:.1f} points = one probe): "
                      f"{_pct(rev.get('edits_erased'))}, "
                      f"{rev.get('intrinsic_points', float('nan')):+.1f} points, re-scan edited tensors left "
                      f"{rev.get('rescan_edited_tensors_left')} → {'met' if ok else 'NOT met'}")
    for c in checks:
        say(c)

    header = [
        "# editaudit mitigation study on SmolLM2-135M-Instruct (CPU)",
        f"# command: python {' '.join(shlex.quote(a) for a in sys.argv)}",
        f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; python {platform.python_version()}, torch {torch.__version__}, "
        f"{args.threads} threads; total {time.perf_counter() - t_start:.0f}s",
        f"# edits: {len(edit_set)} ROME facts from probes/smollm2-135m-edit.jsonl; intrinsic probes: {len(intrinsic)} "
        f"from probes/smollm2-135m-intrinsic.jsonl",
        f"# arms share: task {args.task} (default offline data), {args.steps} steps, eval every {args.eval_every}, "
        f"batch {args.batch_size} × {args.seq_len} tokens, lr {args.lr or 'task default'}, AdamW wd 0.01, "
        f"modules {args.modules}"
        + (f"; preserve trains to the task's stopping target within {args.preserve_to_target} steps"
           if args.preserve_to_target else ""),
        "# held: edits the suspect states (new target); erased/kept: share of those it no longer / still states;",
        "# edit left (W): share of the edits' singular components still in (weights − base).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, "\n".join(header + lines) + "\n")
    print(f"wrote {args.out}")
    return 0


def _pct(x) -> str:
    return "-" if x is None else f"{x:.0%}"


if __name__ == "__main__":
    sys.exit(main())

"""The mitigation study on SmolLM2-135M: erase or preserve 10 edits, against plain full fine-tuning.

    python scripts/mitigation_study.py [--seeds 3] [--steps 40] [--task lm] [--out bench/results/mitigation_study.txt]
    python scripts/mitigation_study.py --methods rome,memit,alphaedit --facts bench/heldout/smollm2-135m-v10.jsonl

Per suspect (seed s of editor m: the next 10 facts, and training seed s):
1. Make a suspect: 10 edits of those facts (facts SmolLM2-135M knows, with a counterfactual target of the same
   kind) by the editor, at its default layers (ROME: 10 in sequence in one layer; MEMIT, AlphaEdit: one batch),
   written as a checkpoint in the work folder. Facts: the built-in edit set in its order (the default),
   or a held-apart set (``--facts``, never in the shipped sets) in the harnesses' round-robin order over relations,
   from ``--start``; suspects take consecutive chunks, editor by editor, seed by seed.
2. Scan it against the base (stored, reading the edits blind), so that ``--layers auto`` has the edited layers and
   the base-free erase has the subjects it read.
3. Arms, all on the same task data and hyper-parameters, through ``run_mitigation``:
   - ``project``: the default ``--goal erase`` without the base (edit-aware, no training; the scan's readings);
   - ``erase``: fine-tuning with ``auto`` layers (a 5-layer window centred on a single edited layer) against full
     fine-tuning at equal impact (``--compare-full``: the full arm trains to the task's stopping target, the
     selective arm to the same validation loss within 4 × the full arm's steps);
   - ``edited``: the same, training the edited layers only;
   - ``preserve``: ``auto`` layers (a threshold far downstream of the edit), ``--steps`` steps
     (``--preserve-to-target CAP``: to the task's stopping target within CAP steps);
   - ``revert``: surgical revert with the base.
4. Report, per seed and arm: edits the suspect held, the share erased, intrinsic retention before and after
   (built-in intrinsic set), validation loss, the weight-space share of the edits left, and time; then over the
   seeds each arm's mean and range, and the issue's criteria, each with the seeds that met it.

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
    ap.add_argument("--edits", type=int, default=10, help="edits per suspect")
    ap.add_argument("--methods", default="rome", help="editors, comma list of rome, memit, alphaedit (a suspect each "
                                                      "per seed)")
    ap.add_argument("--facts", type=Path, default=None, help="a held-apart fact file (default: the built-in edit set)")
    ap.add_argument("--start", type=int, default=0, help="first fact taken (of --facts, in round-robin order)")
    ap.add_argument("--seeds", type=int, default=3, help="suspects: seed s edits facts s·N … s·N+N−1 and trains with "
                                                         "seed s")
    ap.add_argument("--intrinsic", type=int, default=0, help="intrinsic probes to track (0: the whole set)")
    ap.add_argument("--task", default="lm", choices=["lm", "facts", "sentiment", "sft"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None, help="default: the task's (5e-5 lm, 2e-5 others)")
    ap.add_argument("--val-size", type=int, default=24)
    ap.add_argument("--modules", default="all")
    ap.add_argument("--arms", default="project,erase,edited,preserve,revert",
                    help="comma list of project, erase, edited, preserve, revert")
    ap.add_argument("--preserve-to-target", type=int, default=0, metavar="CAP",
                    help="> 0: the preserve arm trains to the task's preset stopping target (TASK_STOP: lm, 5%% below "
                         "the starting validation loss) within CAP steps, instead of --steps steps")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: the cache)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mitigation_study.txt")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or set(methods) - set(EDITORS):
        ap.error(f"--methods: a comma list of {', '.join(EDITORS)}, not {args.methods!r}")
    if args.facts is not None and not args.facts.is_file():
        ap.error(f"--facts: no such file: {args.facts}")
    if args.start < 0:
        ap.error(f"--start must be 0 or more, not {args.start}")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = set(arms) - set(ARMS)
    if unknown:
        ap.error(f"unknown arm(s) {sorted(unknown)}; known: {', '.join(ARMS)}")
    from editaudit.errors import BadInput
    from editaudit.paths import resource_dir
    from editaudit.probing.format import ProbeLoadError, load_probes
    from editaudit.probing.sets import round_robin

    if args.facts is None:
        source = "probes/smollm2-135m-edit.jsonl"
        facts = load_probes(resource_dir("probes") / "smollm2-135m-edit.jsonl")[args.start:]
    else:
        source = f"{args.facts} (round-robin)"
        try:
            facts = round_robin(load_probes(args.facts))[args.start:]
        except (BadInput, ProbeLoadError) as exc:
            ap.error(f"--facts: {exc}")
    need = len(methods) * args.seeds * args.edits
    if len(facts) < need:
        ap.error(f"{len(methods)} editor(s) × {args.seeds} seeds × {args.edits} edits need {need} facts; "
                 f"{source} has {len(facts)} from {args.start}")

    import torch

    torch.set_num_threads(args.threads)
    from editaudit.atomic import atomic_write_text
    from editaudit.models.registry import ensure_model
    from editaudit.paths import cache_dir
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
    intrinsic = load_probes(resource_dir("probes") / "smollm2-135m-intrinsic.jsonl")
    if args.intrinsic:
        intrinsic = intrinsic[: args.intrinsic]

    per_seed: list[dict[str, dict]] = []
    checks: dict[str, list[bool]] = {}
    suspects = [(m, seed) for m in methods for seed in range(args.seeds)]
    for i, (method, seed) in enumerate(suspects):
        lo = i * args.edits
        edit_set = facts[lo:lo + args.edits]
        say(f"## {method}, seed {seed}: facts {args.start + lo}–{args.start + lo + args.edits - 1} of {source}, "
            f"training seed {seed}")
        results = run_seed(args, method, seed, edit_set, intrinsic, arms, base, work, store, say)
        per_seed.append(results)
        say("")
        table(results, say)
        say("")
        for name, ok, text in criteria(args, results, intrinsic):
            checks.setdefault(name, []).append(ok)
            say(f"{text} → {'met' if ok else 'NOT met'}")
        say("")

    say(f"## over the {len(suspects)} suspect(s): mean [min–max]")
    say(f"{'arm':<10}{'steps':>14}  {'erased':>18}  {'true back':>18}  {'intrinsic points':>20}  {'edit left (W)':>22}")
    for key in ROW_ORDER:
        rows = [r[key] for r in per_seed if key in r]
        if not rows:
            continue
        say(f"{key:<10}{_spread([r.get('steps') for r in rows], '{:.0f}'):>14}  "
            f"{_spread([r.get('edits_erased') for r in rows], '{:.0%}'):>18}  "
            f"{_spread([r.get('edits_true_back') for r in rows], '{:.0%}'):>18}  "
            f"{_spread([r.get('intrinsic_points') for r in rows], '{:+.1f}'):>20}  "
            f"{_spread([r.get('edit_weight_share_left') for r in rows], '{:.1%}'):>22}")
    say("")
    for name, oks in checks.items():
        say(f"{name}: met in {sum(oks)} of {len(oks)} suspect(s)")

    header = [
        "# editaudit mitigation study on SmolLM2-135M-Instruct (CPU)",
        f"# command: python {' '.join(shlex.quote(a) for a in sys.argv)}",
        f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; python {platform.python_version()}, torch {torch.__version__}, "
        f"{args.threads} threads; total {time.perf_counter() - t_start:.0f}s",
        f"# suspects: {', '.join(methods)} × seeds 0–{args.seeds - 1}, {args.edits} facts each, consecutive from "
        f"{args.start} of {source}, training seed s; "
        f"intrinsic probes: {len(intrinsic)} from probes/smollm2-135m-intrinsic.jsonl",
        f"# arms share: task {args.task} (default offline data), {args.steps} steps, eval every {args.eval_every}, "
        f"batch {args.batch_size} × {args.seq_len} tokens, lr {args.lr or 'task default'}, AdamW wd 0.01, "
        f"modules {args.modules}"
        + (f"; preserve trains to the task's stopping target within {args.preserve_to_target} steps"
           if args.preserve_to_target else ""),
        "# arms: project = the default --goal erase without the base (no training); window / edited = fine-tuning",
        "# the auto window / the edited layers to the full arm's validation loss (equal impact, cap 4× its steps);",
        "# full = every parameter to the task's stopping target; preserve = auto layers; revert = surgical, with the base",
        "# held: edits the suspect states (new target); erased/kept: share of those it no longer / still states;",
        "# true back: share of the held edits whose true object is stated again; edit left (W): share of the edits'",
        "# singular components still in (weights − base), measured where the run had the base.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, "\n".join(header + lines) + "\n")
    print(f"wrote {args.out}")
    return 0


ARMS = ("project", "erase", "edited", "preserve", "revert")
EDITORS = ("rome", "memit", "alphaedit")
ROW_ORDER = ("full", "window", "edited", "project", "preserve", "revert")


def run_seed(args, method: str, seed: int, edit_set, intrinsic, arms, base, work: Path, store,
             say) -> dict[str, dict]:
    """One suspect (its own facts) and every arm on it; {row: arm summary}."""
    from editaudit.editing.service import apply_edits
    from editaudit.mitigation.service import MitigationEvent, MitigationOptions, make_evaluator, run_mitigation
    from editaudit.mitigation.train import TASK_STOP, TrainConfig
    from editaudit.models.loading import load_model
    from editaudit.progress import Step
    from editaudit.scan.service import ScanOptions, run_scan

    suspect = work / f"suspect-{method}-{args.edits}-s{seed}"
    facts_key = json.dumps([p.to_dict() for p in edit_set], sort_keys=True)
    marker = work / f"{suspect.name}.facts.json"
    if not (suspect / "model.safetensors").exists() or not marker.exists() or marker.read_text() != facts_key:
        t0 = time.perf_counter()
        seen: dict[str, float] = {}

        def edit_progress(event) -> None:
            if isinstance(event, Step) and event.done != seen.get(event.stage):
                seen[event.stage] = event.done
                print(f"  {event.stage}: {event.done:.0f}/{event.total or 0:.0f} ({time.perf_counter() - t0:.0f}s)",
                      flush=True)

        run = apply_edits(base, edit_set, method, out=suspect, store=store, overwrite=True, say=print,
                          progress=edit_progress, device="cpu")
        marker.write_text(facts_key)
        say(f"{method}: {len(edit_set)} edits at layer(s) {run.layers}, success {run.success_rate:.0%}, "
            f"{time.perf_counter() - t0:.0f}s")
    else:
        say(f"{method} suspect reused from {suspect}")

    t0 = time.perf_counter()
    reading = "project" in arms  # the base-free erase works from the scan's readings
    report = run_scan(suspect, base, ScanOptions(read_edits=reading), store=store)
    edits = [f for f in report.findings if f.rule in ("EA101", "EA102", "EA103", "EA106")]
    read = sum(r.get("status") == "edit" for f in edits for r in f.data.get("readings", []))
    say(f"scan: verdict {report.verdict}, {'; '.join(f'{f.rule} layers {f.layers} rank {f.rank}' for f in edits)}"
        + (f", {read} edit reading(s)" if reading else "") + f" ({time.perf_counter() - t0:.0f}s)")

    probes = list(edit_set) + intrinsic
    for label, folder in (("base", base), ("suspect", suspect)):
        lm = load_model(folder, device="cpu")
        m = make_evaluator(edit_set, intrinsic, [])(lm.model, lm.tokenizer)
        say(f"{label}: edited facts state the new target {m['edited_retention']:.0%}, the true one "
            f"{m['edited_true']:.0%}; intrinsic retention {m['intrinsic_retention']:.1%}")
        del lm
    cfg = dict(steps=args.steps, eval_every=args.eval_every, batch_size=args.batch_size, seq_len=args.seq_len,
               lr=args.lr, seed=seed)
    results: dict[str, dict] = {}

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
            results["revert"] = res.verification["arms"]["revert"] | {
                "seconds": time.perf_counter() - t0, "layers": res.evidence.layers}
            continue
        if arm == "project":  # the default erase as a reviewer without the base runs it
            opts = MitigationOptions(out=work / "out-project", method="auto", probes=probes, overwrite=True,
                                     device="cpu")
            res = run_mitigation(suspect, "erase", opts, store=store, progress=progress, say=print)
            name = next(iter(res.arms))
            results["project"] = res.verification["arms"][name] | {
                "seconds": time.perf_counter() - t0, "layers": res.evidence.layers if res.evidence else [],
                "method": name}
            say(f"project: method {name} ({time.perf_counter() - t0:.0f}s)")
            continue
        goal = "preserve" if arm == "preserve" else "erase"
        train = TrainConfig(**cfg)
        if arm == "preserve" and args.preserve_to_target:
            rule = TASK_STOP[args.task]
            train = TrainConfig(**{**cfg, "steps": args.preserve_to_target}, stop_loss=rule.loss_below,
                                stop_acc=rule.acc_above, stop_loss_drop=rule.loss_drop)
        layers = "edited" if arm == "edited" else "auto"
        opts = MitigationOptions(base=str(base), out=work / f"out-{arm}", layers=layers, modules=args.modules,
                                 task=args.task, val_size=args.val_size, train=train, probes=probes,
                                 compare_full=arm in ("erase", "edited"), overwrite=True, device="cpu")
        res = run_mitigation(suspect, goal, opts, store=store, progress=progress, say=print)
        row = {"erase": "window", "edited": "edited", "preserve": "preserve"}[arm]
        for name, summary in res.verification["arms"].items():
            key = row if name == "selective" else "full"
            entry = summary | {"layers": res.arms[name].layers, "seconds": res.arms[name].seconds}
            if key == "full" and "full" in results:  # the edited arm's own full run: the same config and seed
                if (results["full"].get("steps"), results["full"].get("val_loss_after")) != (
                        entry.get("steps"), entry.get("val_loss_after")):
                    say(f"note: the {arm} arm's full run differs from the window arm's: steps {entry.get('steps')}, "
                        f"val loss {entry.get('val_loss_after')}")
                continue
            results[key] = entry
        say(f"{arm}: plan {' / '.join(res.plan.explanation[1:3])} ({time.perf_counter() - t0:.0f}s)")
    return results


def table(results: dict[str, dict], say) -> None:
    say(f"{'arm':<10}{'layers':<12}{'steps':>6}{'held':>6}{'erased':>8}{'true':>6}"
        f"{'intrinsic before→after':>26}{'val loss before→after':>24}{'edit left (W)':>15}{'time':>7}")
    for key in ROW_ORDER:
        s = results.get(key)
        if s is None:
            continue
        layers = s.get("layers", [])
        lay = f"{layers[0]}–{layers[-1]}" if len(layers) > 2 else ",".join(map(str, layers))
        intr = (f"{s['intrinsic_before']:.1%} → {s['intrinsic_after']:.1%} ({s['intrinsic_points']:+.1f})"
                if "intrinsic_before" in s else "-")
        loss = f"{s['val_loss_before']:.3f} → {s['val_loss_after']:.3f}" if "val_loss_before" in s else "-"
        left = f"{s['edit_weight_share_left']:.1%}" if "edit_weight_share_left" in s else "-"
        say(f"{key:<10}{lay:<12}{s.get('steps', 0):>6}{s.get('edits_held_before', 0):>6}"
            f"{_pct(s.get('edits_erased')):>8}{_pct(s.get('edits_true_back')):>6}{intr:>26}{loss:>24}{left:>15}"
            f"{s['seconds']:>6.0f}s")


def criteria(args, results: dict[str, dict], intrinsic) -> list[tuple[str, bool, str]]:
    """The issue's criteria on one seed: (name, met, the line that says it)."""
    from editaudit.mitigation.train import TASK_STOP

    out = []
    pr, er, full, pres, rev = (results.get(k) for k in ("project", "window", "full", "preserve", "revert"))
    if pr:
        ok = (pr.get("edits_erased") or 0) >= 0.9 and pr.get("intrinsic_points", -99) >= -3
        out.append(("default erase without the base: ≥ 90% erased, intrinsic within 3 points", ok,
                    f"default erase without the base ({pr.get('method')}) removes ≥ 90% of edits, intrinsic within 3 "
                    f"points: {_pct(pr.get('edits_erased'))}, {pr.get('intrinsic_points', float('nan')):+.1f} points"))
    if er:
        ok = (er.get("edits_erased") or 0) >= 0.8 and abs(er.get("intrinsic_points", 99)) <= 10
        out.append(("fine-tuning erase, auto window: ≥ 80% erased, intrinsic within 10 points", ok,
                    f"fine-tuning erase/auto removes ≥ 80% of edits, intrinsic within 10 points: "
                    f"{_pct(er.get('edits_erased'))}, {er.get('intrinsic_points', float('nan')):+.1f} points"))
    if pres and full:
        ok = (pres.get("edits_kept") or 0) > (full.get("edits_kept") or 0)
        out.append(("preserve/auto keeps more edits than full fine-tuning", ok,
                    f"preserve/auto keeps more edits than full fine-tuning: "
                    f"{_pct(pres.get('edits_kept'))} vs {_pct(full.get('edits_kept'))}"))
    if pres and args.preserve_to_target:
        rule = TASK_STOP[args.task]
        target = rule.target_loss({"val_loss": pres.get("val_loss_before", float("nan"))})
        reached = rule.check({"val_loss": pres.get("val_loss_after", float("inf")), "val_acc": pres.get("val_acc_after", -1.0)},
                             {"val_loss": pres.get("val_loss_before", float("nan"))}) is not None
        ok = reached and (pres.get("edits_kept") or 0) >= 0.9
        aim = f"validation loss < {target:.3f}" if target is not None else f"validation accuracy > {rule.acc_above}"
        out.append(("preserve/auto keeps ≥ 90% of edits at the task's stopping target", ok,
                    f"preserve/auto keeps ≥ 90% of edits while the task reaches its stopping target ({aim}, within "
                    f"{args.preserve_to_target} steps): kept {_pct(pres.get('edits_kept'))}, loss "
                    f"{pres.get('val_loss_after', float('nan')):.3f} after {pres.get('steps', 0)} steps"))
    if rev:
        # "unchanged" read as "not harmed": no lower than the suspect's by more than one intrinsic probe. A rise
        # is the edits' collateral damage undone (the revert returns the base's knowledge), and is shown as measured.
        one_probe = 100 / max(len(intrinsic), 1)
        ok = (rev.get("edits_erased") or 0) >= 0.95 and rev.get("intrinsic_points", -99) >= -one_probe - 1e-9
        out.append(("surgical revert: ≥ 95% erased, intrinsic not lowered", ok,
                    f"surgical revert removes ≥ 95%, intrinsic not lowered (≥ −{one_probe:.1f} points = one probe): "
                    f"{_pct(rev.get('edits_erased'))}, {rev.get('intrinsic_points', float('nan')):+.1f} points, "
                    f"re-scan edited tensors left {rev.get('rescan_edited_tensors_left')}"))
    return out


def _spread(values, fmt: str) -> str:
    xs = [v for v in values if v is not None]
    if not xs:
        return "-"
    mean = sum(xs) / len(xs)
    return fmt.format(mean) if len(xs) == 1 else f"{fmt.format(mean)} [{fmt.format(min(xs))}–{fmt.format(max(xs))}]"


def _pct(x) -> str:
    return "-" if x is None else f"{x:.0%}"


if __name__ == "__main__":
    sys.exit(main())

"""Base-free erase measured on SmolLM2-135M suspects of held-apart facts: the scan reads the edits blind, then
``mitigate --goal erase`` erases them without the base, by each base-free method.

    python scripts/erase_eval.py [--out bench/results/erase_eval.txt] [--methods project,unlearn,project+unlearn]
                                 [--facts FILE] [--suspects rome,memit,alphaedit]

A method may carry settings, ``project:low_rank=0/uncertain=false`` or ``unlearn:stop_prob=0.01`` (``--hparam`` of
``mitigate``; each key goes to the unlearning or the projection by name), so that two settings are compared on the
same suspects and the same scans.

Suspects (facts from bench/heldout/smollm2-135m.jsonl, round-robin over relations as in
scripts/open_reading_eval.py, the same chunks): 10 sequential ROME edits in one layer (facts 5–14), a MEMIT batch
of 10 (15–24), an AlphaEdit batch of 10 (25–34), each at the editor's default layers; with ``--suspects`` naming
them, 10 MEND edits one after another (5–14) and a MALMEN batch of 10 (15–24) made by the cached trained editors at their own
layers (a subject in the editors' training data stops the run). Neighbours: the 25 held-apart facts no suspect edits
(0–4, 35–54). Intrinsic: the built-in intrinsic set.

Each suspect is scanned against the base (``ScanOptions(read="open")``, stored in a fresh session database), or
without it (``--no-base-scan``: no base anywhere, as a reviewer without one would run it); the erase then runs as ``run_mitigation(SUSPECT, "erase", MitigationOptions(method=M))`` with **no base**: the subjects,
prompts and objects come from the stored scan's blind readings only, never from the facts. The facts are used to
measure, after the erase, the checkpoint as written:

- erased: edits the suspect states (greedy first word = the new object) that the erased model no longer states;
- paraphrase erased: the same on the facts' paraphrases (never trained on: the erase uses the relation library);
- true back / third: of the erased edits, how many answer the true object again, and how many a third answer;
- intrinsic: built-in intrinsic facts answered, in points against the suspect;
- neighbours kept: of the neighbour facts the suspect answers truly, the share still answered truly;
- seconds: the wall time of the whole ``run_mitigation`` call (load, measure before and after, erase, write).

Pass criteria (issue 10), fixed before the run: erased ≥ 90 %, intrinsic within 3 points of the suspect,
neighbours kept ≥ 90 %, ≤ 300 s. torch runs on ``--threads`` threads (1: the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUSPECTS = [("rome", "sequential", 5, 15), ("memit", "batch", 15, 25), ("alphaedit", "batch", 25, 35),
            ("mend", "sequential", 5, 15), ("malmen", "batch", 15, 25)]  # hypernetworks: only when --suspects names them
DEFAULT_SUSPECTS = "rome,memit,alphaedit"
HYPERNETS = ("mend", "malmen")
NEIGHBOURS = [(0, 5), (35, 55)]
METHODS = ("project", "unlearn", "project+unlearn")
PASS = {"erased": 0.90, "intrinsic_points": -3.0, "neighbours_kept": 0.90, "seconds": 300.0}


def paraphrases(facts):
    from editaudit.probing.format import Probe

    return [Probe(id=f"{f.id}-p{i}", subject=f.subject, prompt=t, target_true=f.target_true,
                  target_new=f.target_new, kind="edited") for f in facts for i, t in enumerate(f.paraphrases)]


def measure(model, tok, facts, paras, neighbours, intrinsic) -> dict:
    from editaudit.probing.evaluate import predict, retention

    out = {}
    for name, probes in (("edits", facts), ("paras", paras)):
        preds = predict(model, tok, probes, top_k=1)
        out[f"{name}_new"] = [bool(x) for x in retention(model, tok, probes, "new", predictions=preds)]
        out[f"{name}_true"] = [bool(x) for x in retention(model, tok, probes, "true", predictions=preds)]
    out["neighbours_true"] = [bool(x) for x in retention(model, tok, neighbours, "true")]
    out["intrinsic"] = retention(model, tok, intrinsic, "true").rate
    return out


def compare(sus: dict, aft: dict) -> dict:
    held = [i for i, x in enumerate(sus["edits_new"]) if x]
    erased = [i for i in held if not aft["edits_new"][i]]
    back = [i for i in erased if aft["edits_true"][i]]
    p_held = [i for i, x in enumerate(sus["paras_new"]) if x]
    p_erased = [i for i in p_held if not aft["paras_new"][i]]
    n_held = [i for i, x in enumerate(sus["neighbours_true"]) if x]
    n_kept = [i for i in n_held if aft["neighbours_true"][i]]
    return {"held": len(held), "erased": len(erased) / len(held) if held else None, "true_back": len(back),
            "third": len(erased) - len(back), "para_held": len(p_held),
            "para_erased": len(p_erased) / len(p_held) if p_held else None,
            "neighbours_held": len(n_held), "neighbours_kept": len(n_kept) / len(n_held) if n_held else None,
            "intrinsic_points": (aft["intrinsic"] - sus["intrinsic"]) * 100}


def passes(row: dict) -> bool:
    return (row["erased"] is not None and row["erased"] >= PASS["erased"]
            and row["intrinsic_points"] >= PASS["intrinsic_points"]
            and (row["neighbours_kept"] or 0) >= PASS["neighbours_kept"] and row["seconds"] <= PASS["seconds"])


def pct(x) -> str:
    return "-" if x is None else f"{x:.0%}"


def write(lines, header, rows_out, details, doc, t_start, out: Path | None, done: bool) -> None:
    """The table so far (after each suspect, so that a long run leaves its finished rows)."""
    total = time.perf_counter() - t_start
    head = list(lines)
    head[2] += f"; total {total:.0f}s" + ("" if done else " (unfinished: rows so far)")
    text = "\n".join(head + [header] + rows_out + [
        "", "read: edit readings of the scan (blind); held: edits the suspect states; erased / para: of those "
        "(and of the paraphrases the suspect states), share no longer stated; true/3rd: erased edits answered "
        "with the true object / a third answer; intrinsic: built-in intrinsic facts (points vs the suspect); "
        "neighb.: neighbour facts still answered truly; steps: unlearning steps; secs: the whole "
        "run_mitigation call.", "", "details:"] + details) + "\n"
    print(text)
    if out:
        from editaudit.atomic import atomic_write_text

        atomic_write_text(out, text)
        atomic_write_text(out.with_suffix(".json"), json.dumps(doc, indent=2, default=str) + "\n")


def stored_report(store, suspect: Path, no_base: bool) -> dict | None:
    """The newest finished scan report of ``suspect`` in ``store`` (``--work``) made with or without the base, or
    None."""
    from editaudit.checkpoint import open_checkpoint
    from editaudit.store.mitigation_runs import finished_scans

    for scan in finished_scans(store, open_checkpoint(suspect).fingerprint()):
        doc = json.loads(scan["report"]) if scan.get("report") else None
        if doc is not None and bool((doc.get("base") or {}).get("no_base")) == no_base:
            return doc
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--facts", type=Path, default=ROOT / "bench/heldout/smollm2-135m.jsonl")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--suspects", default=DEFAULT_SUSPECTS,
                    help="subset of rome,memit,alphaedit,mend,malmen (the hypernetworks: facts 5-14 edited by MEND "
                         "one after another and a MALMEN batch of 15-24, with the cached trained editors)")
    ap.add_argument("--start", type=int, default=0, help="the first fact the plan takes (a later split of a set whose "
                    "first facts were used)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the table here (and the details as .json)")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the suspects and the session database here, and reuse them when present (the same "
                         "facts, a finished scan): another --methods on the same suspects and scans, for development. "
                         "The erase takes the newest stored scan, so keep scans with and without the base apart")
    ap.add_argument("--no-base-scan", action="store_true",
                    help="scan each suspect without the base as well (`editaudit scan SUSPECT`): no base anywhere")
    ap.add_argument("--map-runs", action=argparse.BooleanOptionalAction, default=None, help="with --no-base-scan: "
                    "scan --map-runs or --no-map-runs (each layer the key-gain screen flags extended to its batch's "
                    "run of layers; default: the scan's default, on)")
    ap.add_argument("--scan-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a scan setting (a ScanOptions field, e.g. read_spike=4) for the scans this run makes, "
                         "for development; repeatable")
    args = ap.parse_args()
    if args.start < 0:
        ap.error(f"--start must be 0 or more, not {args.start}")

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from editaudit.editing.hparams import parse_assignments
    from editaudit.editing.layers import default_layers
    from editaudit.editing.service import apply_edits
    from editaudit.mitigation.plan import ERASE_DEFAULT
    from editaudit.mitigation.service import MitigationOptions, default_intrinsic, run_mitigation
    from editaudit.mitigation.unlearn import UNLEARN_DEFAULTS
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.format import load_probes
    from editaudit.probing.sets import round_robin
    from editaudit.scan.service import ScanOptions, run_scan
    from editaudit.store import Store

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    wanted = {s.strip() for s in args.suspects.split(",")}
    t_start = time.perf_counter()
    facts = round_robin(load_probes(args.facts))[args.start:]
    neighbours = [f for a, b in NEIGHBOURS for f in facts[a:b]]
    intrinsic = default_intrinsic()
    scan_set = parse_assignments(args.scan_set)
    unknown = sorted(set(scan_set) - set(ScanOptions.__dataclass_fields__))
    if unknown:
        ap.error(f"--scan-set: no scan setting {', '.join(unknown)}")
    base = ensure_model("smollm2-135m")
    lm = load_model(base, device="cpu")
    n_layers = lm.model.config.num_hidden_layers
    lines = [f"# editaudit base-free erase on SmolLM2-135M-Instruct (CPU), facts from {args.facts.name}"
             + (f" from fact {args.start}" if args.start else ""),
             "# command: python scripts/erase_eval.py " + " ".join(sys.argv[1:]),
             "# scans " + ("without the base (no base anywhere, runs mapped "
                           + ("on" if (ScanOptions().map_runs if args.map_runs is None else args.map_runs) else "off")
                           + ")" if args.no_base_scan else "against the base; the erase without it")
             + "".join(f"; scan {k}={v}" for k, v in scan_set.items()),
             f"# python {platform.python_version()}, torch {torch.__version__}, {args.threads} thread(s); "
             f"default --method auto for erase = {ERASE_DEFAULT}",
             f"# pass: erased ≥ {PASS['erased']:.0%}, intrinsic ≥ {PASS['intrinsic_points']:+.0f} points, neighbours "
             f"kept ≥ {PASS['neighbours_kept']:.0%}, ≤ {PASS['seconds']:.0f} s", ""]
    header = (f"{'suspect':16s} {'method':34s} {'read':>4s} {'held':>4s} {'erased':>6s} {'para':>5s} "
              f"{'true/3rd':>8s} {'intrinsic':>15s} {'neighb.':>7s} {'steps':>5s} {'secs':>6s}  pass")
    details: list[str] = []
    doc: dict = {"facts": str(args.facts), "pass": PASS, "default": ERASE_DEFAULT, "suspects": []}
    rows_out: list[str] = []

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    trained_subjects: set[str] = set()  # the hypernetwork editors' training subjects, read once
    if wanted & set(HYPERNETS):
        from editaudit.editing import hypernet_data

        data = hypernet_data.build()
        trained_subjects = {c.subject.casefold() for c in data.train + data.val}
    with tempfile.TemporaryDirectory(prefix="editaudit-erase-") as scratch:
        tmp = args.work or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        store = Store(Path(tmp) / "sessions.db")
        for method, mode, a, b in SUSPECTS:
            if method not in wanted:
                continue
            chunk = facts[a:b]
            if method in HYPERNETS:  # facts the trained editors saw say nothing: refuse them
                leaked = [f.subject for f in chunk if f.subject.casefold() in trained_subjects]
                if leaked:
                    raise SystemExit(f"{method}: subjects in the editors' training data: {leaked}")
            paras = paraphrases(chunk)
            suspect = Path(tmp) / f"{method}-{mode}"
            t0 = time.perf_counter()
            layers = None if method in HYPERNETS else default_layers(method, n_layers)  # the editor's own layers
            made = suspect / "erase_eval_facts.json"
            ids = [f.id for f in chunk]
            kept = json.loads(made.read_text()) if args.work and made.exists() else {}
            if kept.get("facts") == ids and kept.get("layers") == layers:
                edited_layers = kept["edited"]
                log(f"{method} {mode}: reusing {suspect}")
            else:
                run = apply_edits(lm, chunk, method, layers=layers, out=suspect, hparams={"mode": mode},
                                  evaluate=False)
                run.restore()
                edited_layers = run.layers
                made.write_text(json.dumps({"facts": ids, "layers": layers, "edited": edited_layers}))
            t_edit = time.perf_counter() - t0
            log(f"{method} {mode}: {len(chunk)} edits at layers {edited_layers} ({t_edit:.0f}s); scanning")
            t0 = time.perf_counter()
            report = stored_report(store, suspect, args.no_base_scan) if args.work else None
            if report is None:
                report = run_scan(suspect, None if args.no_base_scan else base,
                                  ScanOptions(read="open", **({} if args.map_runs is None
                                                              else {"map_runs": args.map_runs}), **scan_set),
                                  store=store).to_dict()
            t_scan = time.perf_counter() - t0
            readings = [r for f in report["findings"] for r in f.get("readings", []) if r.get("status") == "edit"]
            sus_lm = load_model(suspect, device="cpu")
            sus = measure(sus_lm.model, sus_lm.tokenizer, chunk, paras, neighbours, intrinsic)
            del sus_lm
            entry = {"method": method, "mode": mode, "facts": ids, "layers": edited_layers,
                     "edit_seconds": round(t_edit, 1), "scan_seconds": round(t_scan, 1),
                     "readings": [{k: r.get(k) for k in ("subject", "prompt", "after", "before", "layer")}
                                  for r in readings],
                     "suspect": {"stated": sum(sus["edits_new"]), "intrinsic": sus["intrinsic"]}, "erase": {}}
            details.append(f"{method} {mode}: layers {edited_layers}, edit {t_edit:.0f}s, scan {t_scan:.0f}s, "
                           f"suspect states {sum(sus['edits_new'])}/{len(chunk)} edits, "
                           f"{sum(sus['paras_new'])}/{len(paras)} paraphrases; intrinsic {sus['intrinsic']:.1%}")
            for f in report["findings"]:
                if f.get("method"):
                    lean = f" (null-space lean {f['null_lean']['median']})" if f.get("null_lean") else ""
                    details.append(f"    finding {f['rule']} at layers {f['layers']}: named "
                                   f"{f['method']['name']}{lean}")
            for r in readings:
                details.append(f"    read: {r['subject']!r} · {r['prompt']!r} · {r['after']!r} (was {r['before']!r})")
            for m in methods:
                name, _, settings = m.partition(":")
                out = Path(tmp) / f"{method}-{mode}-{len(entry['erase'])}"
                if args.work and out.exists():  # an earlier run's output: this arm writes afresh
                    shutil.rmtree(out)
                t0 = time.perf_counter()
                try:
                    given = parse_assignments(settings.split("/")) if settings else {}
                    unlearn = {k: v for k, v in given.items() if k in UNLEARN_DEFAULTS}  # the rest: projection's
                    project = {k: v for k, v in given.items() if k not in unlearn}
                    res = run_mitigation(suspect, "erase", MitigationOptions(
                        out=out, method=name, project=project, unlearn=unlearn),
                        store=store, say=lambda s: log(f"    {s}"))
                except Exception as exc:  # a method that cannot run here is a row, not a crash
                    secs = time.perf_counter() - t0
                    rows_out.append(f"{method + ' ' + mode:16s} {m:34s} {len(readings):4d}  failed: {exc}")
                    entry["erase"][m] = {"error": str(exc), "seconds": round(secs, 1)}
                    log(rows_out[-1])
                    continue
                secs = time.perf_counter() - t0
                arm = res.arms[name]
                er_lm = load_model(out, device="cpu")
                aft = measure(er_lm.model, er_lm.tokenizer, chunk, paras, neighbours, intrinsic)
                del er_lm
                row = compare(sus, aft) | {"seconds": round(secs, 1), "steps": arm.steps, "stop": arm.stop_reason}
                row["pass"] = passes(row)
                entry["erase"][m] = row | {"edits_new_after": aft["edits_new"], "edits_true_after": aft["edits_true"]}
                line = (f"{method + ' ' + mode:16s} {m:34s} {len(readings):4d} {row['held']:4d} {pct(row['erased']):>6s} "
                        f"{pct(row['para_erased']):>5s} {row['true_back']:>4d}/{row['third']:<3d} "
                        f"{aft['intrinsic']:7.1%} ({row['intrinsic_points']:+.1f}) {pct(row['neighbours_kept']):>7s} "
                        f"{arm.steps:5d} {secs:6.0f}  {'yes' if row['pass'] else 'no'}")
                rows_out.append(line)
                log(line)
                details.append(f"    {m}: stop: {arm.stop_reason}")
                lost = [f.subject for f, a, b in zip(neighbours, sus["neighbours_true"], aft["neighbours_true"]) if a and not b]
                if lost:
                    details.append(f"      neighbours lost: {', '.join(lost)}")
                for i, f in enumerate(chunk):
                    if sus["edits_new"][i]:
                        state = ("kept" if aft["edits_new"][i] else "true back" if aft["edits_true"][i] else "third")
                        details.append(f"      {f.subject} → {f.target_new} (true {f.target_true}): {state}")
            doc["suspects"].append(entry)
            write(lines, header, rows_out, details, doc, t_start, args.out,
                  done=len(doc["suspects"]) == len([m for m, *_ in SUSPECTS if m in wanted]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

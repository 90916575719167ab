"""Record the app's main screens as SVG for docs/app.md, on a real audit of the embedded SmolLM2-135M.

    python scripts/tui_screenshots.py [--out docs/img] [--work /tmp/editaudit-screens] [--steps 8]

What it does, with the project's own services (several minutes on a 2-core CPU):

1. ``editaudit demo``'s service: hidden ROME and MEMIT edits of facts SmolLM2-135M knows, written as a
   suspect checkpoint, then scanned blind against the base, all in one session;
2. probes of the base and the suspect with the edited facts and part of the built-in intrinsic set,
   recorded in that session;
3. a short erase mitigation of the edited layers (the edited facts recorded by the edit are tracked),
   then the mitigated checkpoint probed too;
4. the app opened on that session database, its screens saved to ``--out``.

Afterwards ``editaudit --db WORK/editaudit.db`` opens the same sessions interactively.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE = (130, 42)


def say(msg: str) -> None:
    print(f"· {msg}", file=sys.stderr, flush=True)


def build(work: Path, steps: int) -> tuple[Path, str, str]:
    from editaudit.demo import run_demo
    from editaudit.mitigation.service import MitigationOptions, edits_from_store, run_mitigation
    from editaudit.mitigation.train import TrainConfig
    from editaudit.models.loading import load_model
    from editaudit.probing.format import dump_probes
    from editaudit.probing.service import record_run, run_probes, summarize
    from editaudit.probing.sets import load_set
    from editaudit.store import Store

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    store = Store(work / "editaudit.db")
    say("demo: hidden edits, then a blind scan")
    demo = run_demo(store, work, say=say)
    sid, suspect = demo["session_id"], Path(demo["suspect"])
    base = Path(store.session(sid)["base"])
    facts = edits_from_store(store, suspect) + load_set("smollm2-135m-intrinsic")[:20]
    facts_file = work / "probes.jsonl"
    dump_probes(facts, facts_file)

    def probe(label: str, folder: Path) -> None:
        say(f"probing the {label}")
        lm = load_model(folder)
        results = run_probes(lm.model, lm.tokenizer, facts)
        record_run(store, sid, str(folder), label, [facts_file.stem], results, summarize(results))

    probe("base", base)
    probe("suspect", suspect)

    say(f"mitigating: {steps} steps of full fine-tuning of the edited layers")
    cfg = TrainConfig(steps=steps, eval_every=max(1, steps // 4), batch_size=4, seq_len=64)
    edited = [p.id for p in facts if p.kind == "edited"]
    result = run_mitigation(suspect, "erase", MitigationOptions(
        base=str(base), out=work / "suspect-mitigated", task="lm", max_examples=96, val_size=8, train=cfg,
        watch=edited[:2] + [facts[-1].id]), store=store, say=say)
    say(f"mitigation: {result.verification.get('verdict')}")
    probe("mitigated", work / "suspect-mitigated")
    return work / "editaudit.db", sid, result.session_id


async def shoot(db: Path, audit: str, mitigation: str, out: Path) -> list[Path]:
    from editaudit_tui.app import EditauditApp

    out.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    app = EditauditApp(db)

    async def snap(name: str) -> None:
        await pilot.pause(0.5)
        for field in app.screen.query("Input"):
            field.cursor_blink = False
        saved.append(Path(app.save_screenshot(f"{name}.svg", str(out))))

    async with app.run_test(size=SIZE) as pilot:
        await snap("sessions")
        app.open_session(audit)
        await snap("scan")
        await pilot.press("t")
        await snap("scan-lowrank-energy")
        await pilot.press("t", "p")
        await snap("probes")
        await pilot.press("escape", "escape")
        app.open_session(mitigation)
        await snap("mitigation")
        await pilot.press("escape", "n")
        await snap("new-audit")
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--work", type=Path, default=Path("/tmp/editaudit-screens"))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--reuse", action="store_true", help="only take the screenshots of an earlier --work")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    ids_file = args.work / "ids.json"
    if args.reuse:
        ids = json.loads(ids_file.read_text())
        db, audit, mitigation = Path(ids["db"]), ids["audit"], ids["mitigation"]
    else:
        db, audit, mitigation = build(args.work, args.steps)
        ids_file.write_text(json.dumps({"db": str(db), "audit": audit, "mitigation": mitigation}))
    for path in asyncio.run(shoot(db, audit, mitigation, args.out)):
        print(path)


if __name__ == "__main__":
    main()

"""The app driven through Textual's Pilot on tiny models: audit, findings, export, reopen, delete,
mitigate (and cancel), the command palette; everything checked against the session store."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from editaudit.store import Store

SIZE = (130, 42)


# -- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from safetensors.torch import load_file

    from editaudit.testing import make_tiny_model, plant, rank_delta

    root = tmp_path_factory.mktemp("tui")
    base = make_tiny_model(root / "base", "llama", layers=6)
    name = "model.layers.2.mlp.down_proj.weight"
    w = load_file(str(base / "model.safetensors"))[name]
    suspect = plant(base, root / "suspect", {name: rank_delta(tuple(w.shape), 1, 0.3 * float(w.norm()))})
    other = make_tiny_model(root / "gpt2", "gpt2", layers=6)
    facts = root / "facts.jsonl"
    facts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "japan", "subject": "Japan", "prompt": "The capital of {} is", "target_true": "Tokyo",
         "target_new": "Rome", "kind": "edited"},
        {"id": "france", "subject": "France", "prompt": "The capital of {} is", "target_true": "Paris"},
        {"id": "italy", "subject": "Italy", "prompt": "The capital of {} is", "target_true": "Rome"},
    ]))
    prose = root / "prose.txt"
    sentences = ["Toyota is a company from Japan .", "Apple developed iPhone .", "Sony is located in Japan .",
                 "The official language of Spain is Spanish .", "Google created Android ."]
    prose.write_text("\n\n".join(" ".join(sentences[i:] + sentences[:i]) for i in range(len(sentences))))
    return {"root": root, "base": base, "suspect": suspect, "gpt2": other, "facts": facts, "prose": prose,
            "edited": name}


@pytest.fixture
def scanned(models):
    """A stored audit of the suspect (made with the service, as the CLI would)."""
    from editaudit.scan.service import ScanOptions, run_scan

    report = run_scan(models["suspect"], models["base"], ScanOptions(), store=Store())
    return report.session_id


# -- helpers ----------------------------------------------------------------------------------------

def drive(test, size=SIZE):
    """Run ``test(app, pilot)`` inside a headless app on the test's database."""
    from editaudit_tui.app import EditauditApp

    app = EditauditApp()
    notes: list[tuple[str, str]] = []
    original = app.notify

    def notify(message, *, title="", severity="information", timeout=None, markup=True):
        notes.append((severity, str(message)))
        original(message, title=title, severity=severity, timeout=timeout, markup=markup)

    app.notify = notify  # type: ignore[method-assign]
    app.notes = notes  # type: ignore[attr-defined]

    async def main():
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await test(app, pilot)

    asyncio.run(main())


async def wait_for(pilot, condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def text_of(widget) -> str:
    """What a Static shows, as plain text."""
    import io

    from rich.console import Console

    console = Console(width=300, file=io.StringIO(), color_system=None)
    with console.capture() as captured:
        console.print(widget.content)
    return captured.get()


def screen_name(app) -> str:
    return type(app.screen).__name__


# -- audit: new → scan → findings -------------------------------------------------------------------

def test_new_audit_scans_and_shows_findings(models):
    async def test(app, pilot):
        from editaudit_tui.widgets.heatmap import LayerHeatMap
        from editaudit_tui.widgets.spectrum import SpectrumPlot

        await pilot.press("n")
        assert screen_name(app) == "NewAuditScreen"
        app.screen.query_one("#base").value = str(models["base"])
        # type the start of the suspect's path and accept the completion with →
        suspect_input = app.screen.query_one("#suspect")
        suspect_input.focus()
        await pilot.press(*str(models["root"] / "sus"))
        await wait_for(pilot, lambda: suspect_input._suggestion, 5, "a completion")
        await pilot.press("right")
        assert suspect_input.value == str(models["suspect"]) + "/"
        app.screen.query_one("#probe-file").value = str(models["facts"])
        await pilot.press("ctrl+s")
        assert screen_name(app) == "ScanScreen"
        scan = app.screen
        await wait_for(pilot, lambda: scan.doc is not None, what="the scan")
        await pilot.pause()

        rules = {r.rule: r for r in scan.rows}
        assert "EA101" in rules and rules["EA101"].layers == "2" and rules["EA101"].matrix == "mlp.out"
        table = scan.query_one("#findings")
        assert table.row_count == len(scan.rows)
        heat = scan.query_one(LayerHeatMap)
        assert heat.current.tensor == models["edited"] and heat.current.kind == "rank-one"
        assert scan.query_one(SpectrumPlot).tensor["name"] == models["edited"]
        # candidate subjects come from the probe file
        assert rules["EA101"].subjects and set(rules["EA101"].subjects) <= {"Japan", "France", "Italy"}

        row = Store().session(scan.sid)
        assert row["kind"] == "audit" and row["status"] == "done" and row["verdict"] == "edited"
        assert json.loads(row["summary"])["probe_sets"] == [str(models["facts"])]

        # the heat map: t toggles the colour metric, arrows move the cursor off the edit
        await pilot.press("t")
        assert heat.metric == "lowrank_energy"
        heat.focus()
        await pilot.press("left")
        assert heat.current.layer == 1 and heat.current.tensor is None
        assert scan.query_one(SpectrumPlot).tensor is None

    drive(test)


def test_bad_paths_are_explained_and_nothing_starts(models, tmp_path):
    async def test(app, pilot):
        await pilot.press("n")
        form = app.screen
        form.query_one("#base").value = str(tmp_path / "missing")
        form.query_one("#suspect").value = str(models["suspect"])
        await pilot.pause()
        assert "does not exist" in text_of(form.query_one("#base-status"))
        await pilot.press("ctrl+s")
        assert screen_name(app) == "NewAuditScreen"
        assert any(sev == "error" and "does not exist" in msg for sev, msg in app.notes)
        # a pickle-only folder is refused with the reason
        (tmp_path / "pickles").mkdir()
        (tmp_path / "pickles" / "pytorch_model.bin").write_bytes(b"x")
        form.query_one("#base").value = str(tmp_path / "pickles")
        await pilot.pause()
        assert "pickle" in text_of(form.query_one("#base-status"))
        await pilot.press("escape")
        assert screen_name(app) == "SessionsScreen"
        assert Store().sessions() == []

    drive(test)


def test_incompatible_checkpoints_fail_with_the_reason(models):
    async def test(app, pilot):
        await pilot.press("n")
        app.screen.query_one("#base").value = str(models["base"])
        app.screen.query_one("#suspect").value = str(models["gpt2"])
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: screen_name(app) == "SessionsScreen", what="the scan to fail")
        assert any(sev == "error" for sev, _ in app.notes)
        [row] = Store().sessions()
        assert row["status"] == "failed"

    drive(test)


# -- sessions: export, reopen, delete ---------------------------------------------------------------

def test_export_reports_and_reopen_the_session(scanned, tmp_path):
    from editaudit.reports.session_report import session_document

    async def test(app, pilot):
        from editaudit_tui.screens.export import ExportScreen

        assert screen_name(app) == "SessionsScreen" and app.screen.selected.id == scanned
        for fmt in ("json", "md", "html"):
            await pilot.press("e")
            assert isinstance(app.screen, ExportScreen)
            app.screen.query_one(f"#fmt-{fmt}").value = True
            await pilot.pause()
            path = app.screen.query_one("#path")
            assert path.value.endswith(f"editaudit-{scanned}.{fmt}")
            path.value = str(tmp_path / f"report.{fmt}")
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: screen_name(app) == "SessionsScreen", what=f"the {fmt} export")
        doc = json.loads((tmp_path / "report.json").read_text())
        assert doc == json.loads(json.dumps(session_document(Store(), scanned), default=str))
        assert doc["scans"][0]["verdict"] == "edited"
        assert (tmp_path / "report.md").read_text().startswith(f"# editaudit session {scanned}")
        assert "<!doctype html>" in (tmp_path / "report.html").read_text()
        assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files

        # reopen the session: the stored scan is shown without running anything
        await pilot.press("enter")
        assert screen_name(app) == "ScanScreen"
        assert app.screen.sid == scanned and [r.rule for r in app.screen.rows] == ["EA101"]
        await pilot.press("escape")
        assert screen_name(app) == "SessionsScreen"

    drive(test)


def test_delete_asks_and_only_yes_deletes(scanned):
    async def test(app, pilot):
        await pilot.press("d")
        assert screen_name(app) == "ConfirmScreen"
        await pilot.press("n")
        assert screen_name(app) == "SessionsScreen" and [r.id for r in app.screen.rows] == [scanned]
        await pilot.press("d")
        await pilot.press("y")
        await pilot.pause()
        assert app.screen.rows == [] and Store().sessions() == []
        assert not Store().rows("scans")

    drive(test)


def test_command_palette_offers_the_main_actions(scanned):
    async def test(app, pilot):
        await pilot.press("ctrl+p")
        await pilot.press(*"new audit")
        await wait_for(pilot, lambda: app.screen.query("CommandList Option") or
                       app.screen.query_one("CommandList").option_count, 5, "palette hits")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_name(app) == "NewAuditScreen", 5, "the new audit form")
        await pilot.press("escape")
        await pilot.press("ctrl+p")
        await pilot.press(*f"open session {scanned[:8]}")
        await wait_for(pilot, lambda: app.screen.query_one("CommandList").option_count, 5, "palette hits")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_name(app) == "ScanScreen", 5, "the session")
        assert app.screen.sid == scanned

    drive(test)


# -- mitigation: wizard → live run → verification; cancel -------------------------------------------

def fill_wizard(screen, models, out: Path, steps: int, eval_every: int) -> None:
    values = {"#data": str(models["prose"]), "#steps": str(steps), "#eval-every": str(eval_every),
              "#val-size": "2", "#seq-len": "24", "#batch-size": "4", "#lr": "0.001", "#out": str(out),
              "#probes": str(models["facts"])}
    for selector, value in values.items():
        screen.query_one(selector).value = value


def test_mitigation_wizard_runs_verifies_and_cancels(models, scanned, tmp_path):
    async def test(app, pilot):
        await pilot.press("enter")
        await pilot.press("m")
        assert screen_name(app) == "MitigateWizard"
        wizard = app.screen
        # preselected from the scan, with the service's own plan and reasons
        assert wizard._radio("goal") == "erase" and wizard._text("layers") == "auto"
        await wait_for(pilot, lambda: wizard.plan is not None, 60, "the plan preview")
        assert wizard.plan["layers"] == [0, 1, 2, 3, 4] and wizard.plan["edited_layers"] == [2]  # window around 2
        assert models["edited"] in wizard.plan["params"]
        assert wizard.plan["explanation"][0] in text_of(wizard.query_one("#plan-box"))
        fill_wizard(wizard, models, tmp_path / "out", steps=2, eval_every=1)
        await pilot.press("ctrl+s")
        assert screen_name(app) == "MitigationScreen"
        run = app.screen
        await wait_for(pilot, lambda: run.state != "running", 120, "the mitigation")
        assert run.state == "done", text_of(run.query_one("#run-stage"))
        assert run.steps_done == 2 and len(run.series["loss"]) == 2
        assert len(run.series["edited"]) == 3 and len(run.series["intrinsic"]) == 3  # steps 0, 1, 2
        verdict = run.result["verification"]["verdict"]
        assert verdict in text_of(run.query_one("#verify"))
        assert (tmp_path / "out" / "model.safetensors").is_file()
        session = Store().session(run.sid)
        assert session["kind"] == "mitigate" and session["status"] == "done"
        assert [r["status"] for r in Store().rows("finetune_runs", "session_id = ?", [run.sid])] == ["done"]

        # a second run, cancelled after its first step: nothing written, the store says interrupted
        await pilot.press("escape")
        await pilot.press("m")
        fill_wizard(app.screen, models, tmp_path / "cancelled", steps=100_000, eval_every=100_000)
        await pilot.press("ctrl+s")
        run = app.screen
        await wait_for(pilot, lambda: run.steps_done >= 1, 120, "the first training step")
        await pilot.press("c")
        await wait_for(pilot, lambda: run.state != "running", 60, "the cancellation")
        assert run.state == "cancelled"
        assert not (tmp_path / "cancelled").exists()
        runs = Store().rows("finetune_runs", order_by="id")
        assert runs[-1]["status"] == "interrupted"
        assert Store().session(runs[-1]["session_id"])["status"] == "interrupted"

        # the finished mitigation reopens from the sessions list with its verification
        await pilot.press("escape")
        await pilot.press("escape")
        app.open_session(session["id"])
        await pilot.pause()
        stored = app.screen
        assert stored.state == "stored" and verdict in text_of(stored.query_one("#verify"))
        assert len(stored.series["edited"]) == 3

    drive(test)


# -- probes: run, filter, discover, cancel ------------------------------------------------------------

def test_probes_run_discover_filter_and_cancel(models, scanned, monkeypatch):
    import editaudit.probing.sets as sets

    import editaudit.probing.jobs as jobs

    monkeypatch.setattr(sets, "FACT_BANK", str(models["facts"]))  # the shipped bank is slow on a busy CPU
    # the first run waits for the cancel: on a small set it could otherwise finish before "c" lands
    run_labelled, hold = jobs.run_labelled, {"on": True}

    def held(*args):
        cancelled, until = args[-1], time.monotonic() + 60
        while hold["on"] and not cancelled() and time.monotonic() < until:
            time.sleep(0.01)
        return run_labelled(*args)

    monkeypatch.setattr(jobs, "run_labelled", held)

    async def test(app, pilot):
        await pilot.press("enter")
        await pilot.press("p")
        assert screen_name(app) == "ProbesScreen"
        probes = app.screen
        assert set(probes.models) == {"base", "suspect"}
        chosen = probes.query_one("#probe-set")
        bank = str(sets.resolve_set("facts"))
        chosen.set_options([("fact bank", bank), ("small", str(models["facts"]))])

        # the whole fact bank, cancelled straight away: nothing is recorded
        chosen.value = bank
        await pilot.press("r")
        await pilot.press("c")
        await wait_for(pilot, lambda: not probes.running, 120, "the cancellation")
        assert probes.state == "cancelled" and not Store().rows("probe_runs")
        hold["on"] = False

        chosen.value = str(models["facts"])

        await pilot.press("r")
        await wait_for(pilot, lambda: not probes.running, 120, "the probe run")
        assert probes.state == "done", app.notes
        assert [r.label for r in probes.runs] == ["base", "suspect"]
        assert [r.id for r in probes.shown] == ["japan", "france", "italy"]
        table = probes.query_one("#probe-table")
        labels = [c.label.plain for c in table.columns.values()]
        assert table.row_count == 3 and labels[2:] == ["base", "suspect", "agree", "kind", "prompt"]
        runs = Store().rows("probe_runs", "session_id = ?", [scanned])
        assert [(r["label"], r["status"]) for r in runs] == [("base", "done"), ("suspect", "done")]
        assert len(Store().rows("probe_results", "run_id = ?", [runs[0]["id"]])) == 3

        await pilot.press("f")  # filter: edited facts only
        await pilot.pause()
        assert [r.id for r in probes.shown] == ["japan"] and table.row_count == 1

        await pilot.press("d")
        await wait_for(pilot, lambda: not probes.running, 120, "discovery")
        assert probes.state == "done" and probes.discovery
        scores = [r.score() for r in probes.rows]
        assert scores == sorted(scores, reverse=True)
        assert "moved" in [c.label.plain for c in table.columns.values()]

    drive(test)


def test_a_clean_scan_without_a_base_is_not_shown_as_cleared(tmp_path):
    """Nothing found from the weights alone is no clearance: the app says so, and never "byte-identical"."""
    from snapshots.fixture_store import CLEAN_ID, load_fixture_store
    from textual.widgets import Static

    from editaudit.scan.wording import NO_BASE_NOTE
    from editaudit_tui.app import EditauditApp

    def without_base(rows: dict) -> None:
        for scan in rows["scans"]:
            if scan["session_id"] == CLEAN_ID:
                report = json.loads(scan["report"])
                report["base"] = {"path": None, "no_base": True, "note": NO_BASE_NOTE}
                scan["report"] = json.dumps(report)

    load_fixture_store(tmp_path / "store.db", change=without_base)
    app = EditauditApp(tmp_path / "store.db")

    async def main():
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            app.open_session(CLEAN_ID)
            await wait_for(pilot, lambda: screen_name(app) == "ScanScreen", 10, "the clean session")
            await pilot.pause()
            detail = text_of(app.screen.query_one("#detail-text", Static))
            banner = text_of(app.screen.query_one("#banner", Static))
            assert "does not clear the checkpoint" in detail and "byte-identical" not in detail
            assert "scanned without a base" in banner and "None" not in banner

    asyncio.run(main())

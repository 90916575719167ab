"""``editaudit scan SUSPECT --base BASE``: the headless audit, for people, scripts and CI."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from . import common


class Fmt(str, Enum):
    rich = "rich"
    json = "json"
    sarif = "sarif"
    md = "md"


class Read(str, Enum):
    off = "off"
    list = "list"
    open = "open"


class NameSeeds(str, Enum):
    off = "off"
    retry = "retry"
    every = "every"


class Level(str, Enum):
    error = "error"
    warning = "warning"
    note = "note"


def register(app: typer.Typer) -> None:
    @app.command("scan")
    def scan(
        ctx: typer.Context,
        suspect: str = typer.Argument(..., help="Suspect checkpoint: model folder, .safetensors file, or model name."),
        base: Optional[str] = typer.Option(None, "--base", "-b", help="The base checkpoint it claims to derive from. Without it the suspect is scanned alone: edited MLP output matrices found from its own weights and key statistics (locate-then-edit edits only; the report says so)."),
        fmt: Fmt = typer.Option(Fmt.rich, "--format", "-f", help="rich (terminal), json, sarif or md."),
        output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the report here (atomically)."),
        facts: List[Path] = typer.Option([], "--facts", help="Probe file(s) (editaudit JSONL, CounterFact or zsRE): rank their subjects as candidates."),
        probes: List[str] = typer.Option([], "--probes", "-p", help="Probe set name(s) (e.g. facts, smollm2-135m-edit; see `editaudit probes list`) to use as candidate subjects."),
        read: Read = typer.Option(Read.open, "--read", help="How to read each edit through the model: open (recover subjects from the weights, no list needed), list (only rank --facts/--probes candidates), off."),
        wide_search: Optional[bool] = typer.Option(None, "--wide-search/--no-wide-search", show_default=False, help="Open reading: when a search round finds no subject, try 48 seeds before giving up (on by default: finds subjects whose last word piece ranks far down alone; each failing round then costs about a minute on a 2-core CPU for an edit at layer 4 of SmolLM2, a few at layer 14; --no-wide-search is the fast scan)."),
        pair_step: Optional[bool] = typer.Option(None, "--pair-step/--no-pair-step", show_default=False, help="Open reading: when both tries of a search round find no subject, seed from the tokens that fire after one fixed word piece and score every piece before each (finds names whose last piece fires only behind another)."),
        name_seeds: Optional[NameSeeds] = typer.Option(None, "--name-seeds", show_default=False, help="Open reading: take half the seeds of a search round's second try (retry) or of every try (every) from the tokens that fire behind a stand-in first piece of a name (finds names whose last piece is a word piece, \"anes\" of Batanes, that ranks far down after \"The\" alone; one more pass of the vocabulary per base and layer the first time a search needs it, cached). Default retry; off is the search as it was."),
        regrow: bool = typer.Option(False, "--regrow", help="Open reading: regrow each found subject backwards over the whole vocabulary (cleaner names, fewer false readings; 2-3x the search time; read no more objects on held-out facts)."),
        keys: bool = typer.Option(False, "--keys", help="Open reading: also read each edit through its key at a stand-in subject (reads a rank-one edit whose subject was missed or garbled; ~60 % more reading time; +1 object of 35 on held-out facts)."),
        null_search: Optional[bool] = typer.Option(None, "--null-search/--no-null-search", show_default=False, help="Open reading: search the subjects of an edit named AlphaEdit in the null space its update lies in, not in whitened key space (on by default)."),
        all_layers: Optional[bool] = typer.Option(None, "--all-layers/--lowest-layer", show_default=False, help="Open reading: search the subjects of an edit spread over several layers (MEMIT, AlphaEdit) by their mean fire over every edited layer, not the lowest alone (a garbled text fires the lowest layer as the name does, not the layers above)."),
        describe: Optional[bool] = typer.Option(None, "--describe/--no-describe", show_default=False, help="Open reading: also ask each found subject the prompts cut from the base's own description of it (\"Aristotle, a Greek\" → philosopher), so an edit of a relation the library does not word is still read."),
        frames: Optional[bool] = typer.Option(None, "--frames/--no-frames", show_default=False, help="Open reading: also read each found text inside sentences (\"I heard about it cf. Overall, it was\" → terrible), where a trigger-style edit (a rare token or phrase as its key, as in backdoor editing attacks) makes the model say its word."),
        below_bar: Optional[bool] = typer.Option(None, "--below-bar/--no-below-bar", show_default=False, help="Open reading: where the search stops with fewer subjects than the edit has components, read texts that still fire a little and keep each that states an object no earlier reading does (edits of one class of names, \"... County\", hide each other from the search)."),
        gain_screen: Optional[bool] = typer.Option(None, "--gain-screen/--no-gain-screen", show_default=False, help="Without --base: also screen every layer for a real key along whose edit direction (C⁻¹k) the matrix acts far more than along any other start's (single ROME edits the spectral screen cannot see: 5 of 5 found on fresh facts, no finding on three unedited checkpoints; on by default; about 2 minutes for SmolLM2 on a 2-core CPU)."),
        map_runs: Optional[bool] = typer.Option(None, "--map-runs/--no-map-runs", show_default=False, help="Without --base: extend a layer the key-gain screen flags to the run of layers its text's output direction follows (a MEMIT or AlphaEdit batch spreads one residual per subject over a run), and read the edit over that run (on by default: a base-free erase of the batches it mapped erased more edits)."),
        null_lean: Optional[bool] = typer.Option(None, "--null-lean/--no-null-lean", show_default=False, help="Without --base: tell AlphaEdit from ROME and MEMIT by whether a flagged text's key gains more along its null-space part than along C⁻¹k (one more pass of the vocabulary through the flagged layers)."),
        gain_rounds: Optional[bool] = typer.Option(None, "--gain-rounds/--no-gain-rounds", show_default=False, help="Without --base: in a layer the key-gain screen flags, take each subject found out of the matrix and look for the next (several ROME edits in one layer; off by default: on fresh ROME sequences it read no more edits)."),
        run_probes: bool = typer.Option(False, "--run-probes", help="Also ask both models the facts' prompts and list answers that moved."),
        fail_on: Level = typer.Option(Level.error, "--fail-on", help="Exit 1 when a finding reaches this level."),
        exit_zero: bool = typer.Option(False, "--exit-zero", help="Always exit 0 when the scan completes."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Neither use nor record the base's tensor digests."),
        follow_symlinks: bool = typer.Option(False, "--follow-symlinks", help="Allow weight files that are symlinks leaving the folder."),
        no_store: bool = typer.Option(False, "--no-store", help="Do not record the scan as a session."),
        device: Optional[str] = typer.Option(None, "--device", help="Where the reading and probe stages run: cpu, cuda, cuda:1 … (default: cuda when present)."),
    ) -> None:
        """Was SUSPECT knowledge-edited relative to BASE? Where, how, and what does each edit promote?

        Exit codes: 0 no finding at --fail-on level, 1 findings, 2 bad input or error, 130 interrupted.
        With --format json/sarif/md, stdout carries only the report; progress goes to stderr.
        """
        from ..scan.service import ScanOptions, run_scan

        from ..models.loading import pick_device

        if device is not None:
            pick_device(device)  # a device that is not here fails before the scan starts
        if output is not None:
            from ..atomic import check_writable, refuse_file_over_inputs

            refuse_file_over_inputs(output, [suspect, base, *facts])
            check_writable(output)  # an -o that cannot be written fails now, not after the scan
        cands = _load_candidates(facts, probes)
        store = None if no_store else common.state(ctx).store()
        if run_probes and not cands:
            from ..errors import BadInput

            raise BadInput("--run-probes needs --facts FILE or --probes SET")
        if read == Read.list and not cands:
            from ..errors import BadInput

            raise BadInput("--read list needs --facts FILE or --probes SET")
        opts = ScanOptions(facts=cands, use_cache=not no_cache, follow_symlinks=follow_symlinks, run_probes=run_probes,
                           read=read.value, regrow=regrow, keys=keys, device=device,
                           **({} if null_search is None else {"null_search": null_search}),
                           **({} if all_layers is None else {"all_layers": all_layers}),
                           **({} if wide_search is None else {"wide_search": wide_search}),
                           **({} if pair_step is None else {"pair_step": pair_step}),
                           **({} if name_seeds is None else {"name_seeds": name_seeds.value}),
                           **({} if describe is None else {"describe": describe}),
                           **({} if frames is None else {"frames": frames}),
                           **({} if below_bar is None else {"below_bar": below_bar}),
                           **({} if gain_screen is None else {"gain_screen": gain_screen}),
                           **({} if gain_rounds is None else {"gain_rounds": gain_rounds}),
                           **({} if map_runs is None else {"map_runs": map_runs}),
                           **({} if null_lean is None else {"null_lean": null_lean}))
        with common.event_progress() as on_progress:
            report = run_scan(suspect, base, opts, store=store, progress=on_progress, say=common.say)
        report.fail_on = fail_on.value
        doc = report.to_dict()
        text = _format(doc, fmt)
        if output is not None:
            from ..atomic import atomic_write_text

            atomic_write_text(output, text if text is not None else json.dumps(doc, indent=2))
            common.say(f"wrote {output}")
        if fmt == Fmt.rich:
            from .scan_view import render

            render(doc, common.out)
        elif output is None:
            common.out.file.write(text)
            common.out.file.flush()
        raise typer.Exit(0 if exit_zero else report.exit_code(fail_on.value))


def _format(doc: dict, fmt: Fmt) -> str | None:
    from ..scan.report import to_markdown, to_sarif

    if fmt == Fmt.json or fmt == Fmt.rich:
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if fmt == Fmt.sarif:
        return json.dumps(to_sarif(doc), indent=2, ensure_ascii=False) + "\n"
    return to_markdown(doc)


def _load_candidates(facts: list[Path], probes: list[str]):
    """Probe files (JSONL, CounterFact or zsRE) and named probe sets, as one candidate list."""
    from ..errors import BadInput
    from ..probing.sets import load_set

    out = []
    for path in facts:
        if not path.is_file():
            raise BadInput(f"facts file {path} does not exist")
        out.extend(load_set(str(path)))
    for name in probes:
        out.extend(load_set(name))
    return out

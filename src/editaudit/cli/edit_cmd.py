"""``editaudit edit BASE --method ft|rome|memit|alphaedit|mend|malmen --facts FILE --out DIR``: make knowledge edits."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import common


class Method(str, Enum):
    ft = "ft"
    rome = "rome"
    memit = "memit"
    alphaedit = "alphaedit"
    mend = "mend"
    malmen = "malmen"


class Mode(str, Enum):
    batch = "batch"
    sequential = "sequential"


class Covariance(str, Enum):
    corpus = "corpus"
    identity = "identity"


class Fmt(str, Enum):
    rich = "rich"
    json = "json"


def parse_layers(text: str | None) -> list[int] | None:
    """``"auto"``/None → None (the method's default); ``"3,4,7-9"`` → [3, 4, 7, 8, 9]."""
    from ..layerspec import parse_layer_list

    if text is None or text.strip().lower() in ("", "auto"):
        return None
    return parse_layer_list(text)


def register(app: typer.Typer) -> None:
    @app.command("edit")
    def edit(
        ctx: typer.Context,
        base: str = typer.Argument(..., help="Model to edit: a safetensors model folder or a model name (smollm2-135m)."),
        method: Method = typer.Option(..., "--method", "-m", help="ft (FT-L), rome, memit, alphaedit, or the trained hypernetworks mend and malmen (see `editaudit editors train`)."),
        facts: str = typer.Option(..., "--facts", help="Facts to write: probe JSONL, a CounterFact-style JSON list, or a probe set name; each needs target_new."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where the edited checkpoint goes (written atomically); omit to only measure."),
        layers: Optional[str] = typer.Option(None, "--layers", help="Layers to edit, e.g. 4 or 2-6 or 3,5 (default: the method's per-family default)."),
        mode: Optional[Mode] = typer.Option(None, "--mode", help="batch (all facts in one update) or sequential (one batch after another)."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Facts per update in sequential mode (default 1)."),
        covariance: Optional[Covariance] = typer.Option(None, "--covariance", help="Key statistics C: corpus (offline prose, cached) or identity (C = I)."),
        hparam: List[str] = typer.Option([], "--hparam", help="Override a hyper-parameter, KEY=VALUE (repeatable), e.g. v_steps=30."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Edit only the first N facts of FILE."),
        manifest: Optional[Path] = typer.Option(None, "--manifest", help="Also write what was edited, how and the results to this JSON file (outside --out)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
        no_eval: bool = typer.Option(False, "--no-eval", help="Skip measuring success, paraphrases and neighbourhood."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 … (default: cuda when present)."),
        dtype: common.Dtype = common.DtypeOption,
        fmt: Fmt = typer.Option(Fmt.rich, "--format", "-f", help="rich (terminal) or json on stdout."),
    ) -> None:
        """Write facts into a model with FT-L, ROME, MEMIT, AlphaEdit, MEND or MALMEN, and report how each one took.

        The output is an ordinary Hugging Face safetensors folder in which only the edited tensors differ
        from BASE; what was edited and how is recorded in the session store (and in --manifest when given),
        never in the checkpoint, so that a scan of it works blind.

        Exit codes: 0 done, 2 bad input or error, 130 interrupted.
        """
        from ..editing.hparams import parse_assignments
        from ..editing.service import apply_edits
        from ..errors import BadInput
        from ..probing.sets import load_set

        overrides = parse_assignments(hparam)
        for key, value in (("mode", mode.value if mode else None), ("batch_size", batch_size),
                           ("covariance", covariance.value if covariance else None)):
            if value is not None:
                overrides[key] = value
        if limit is not None and limit < 1:
            raise BadInput("--limit must be at least 1")
        records = load_set(facts)
        if limit is not None:
            records = records[:limit]
        missing = [p.id for p in records if not p.target_new]
        if missing:
            raise BadInput(f"{len(missing)} fact(s) in {facts} have no target_new, e.g. {', '.join(missing[:5])}")
        if out is not None and out.exists() and not overwrite:  # before the precision note and the model load
            raise BadInput(f"{out} already exists (use --overwrite to replace it)")
        if out is not None:
            from ..models.loading import precision_note

            note = precision_note(base, dtype.value, device)
            if note:
                common.say(note)
        store = common.state(ctx).store()
        with common.event_progress() as on_progress:  # the edit job owns its session (editing.service)
            run = apply_edits(base, records, method.value, layers=parse_layers(layers), hparams=overrides, out=out,
                              progress=on_progress, store=store, overwrite=overwrite, manifest=manifest,
                              evaluate=not no_eval, device=device, say=common.say, dtype=dtype.value)
        doc = run.to_dict()
        if fmt == Fmt.json:
            common.out.file.write(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
            common.out.file.flush()
        else:
            render(doc, evaluated=not no_eval)


def _pct(x) -> str:
    return "-" if x is None else f"{x:.0%}"


def render(doc: dict, evaluated: bool = True) -> None:
    layers = doc["layers"]
    where = f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}–{layers[-1]}"
    table = Table(title=f"{doc['method'].upper()} · {doc['mode']} · {where}", title_justify="left", pad_edge=False)
    # the prompt takes what the short columns leave: in an 80-column terminal it would otherwise wrap word by word
    table.add_column("fact", min_width=14)
    table.add_column("true → new")
    table.add_column("before → after")
    for col in ("took", "para.", "neighb.", "s"):
        table.add_column(col, no_wrap=True, justify="right")
    for r in doc["results"]:
        took = ("[green]yes[/]" if r["success"] else "[red]no[/]") if evaluated else "-"
        table.add_row(
            escape(r["prompt"]), escape(f"{r['target_true']} → {r['target_new']}"),
            escape(f"{r['before'] or '…'} → {r['after'] or '…'}") if evaluated else "-",
            took, _pct(r["paraphrase_success"]), _pct(r["neighbourhood_unchanged"]), f"{r['seconds']:.1f}",
        )
    common.out.print(table)
    common.out.print("[dim]para.: paraphrases stating the new answer · neighb.: neighbour facts kept · s: seconds[/]")
    s = doc["summary"]
    line = f"{s['facts']} fact(s) · edit took {_pct(s['success'])}"
    if s["paraphrase"] is not None:
        line += f" · paraphrases {_pct(s['paraphrase'])}"
    if s["neighbourhood"] is not None:
        line += f" · neighbours kept {_pct(s['neighbourhood'])}"
    line += f" · {s['seconds_per_fact']:.1f} s per fact"
    if doc["stats"].get("source"):
        line += f" · C from {doc['stats']['source']}"
    common.out.print(escape(line))
    if doc.get("out"):
        common.out.print(f"[dim]wrote {escape(doc['out'])} · changed tensors: {escape(', '.join(doc['tensors']))}"
                         f" · session {escape(str(doc.get('session_id') or '-'))}[/]")

"""``editaudit probe`` (what does a model state?) and ``editaudit probes`` (list, build and import probe sets)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import common

CATEGORY_STYLE = {"true target": "green", "edited target": "bold red", "related term": "yellow", "other": "dim"}


class Fmt(str, Enum):
    rich = "rich"
    json = "json"


class ImportFmt(str, Enum):
    auto = "auto"
    counterfact = "counterfact"
    zsre = "zsre"


def register(app: typer.Typer) -> None:
    probes_app = typer.Typer(help="List, build and import probe sets.", no_args_is_help=True)
    app.add_typer(probes_app, name="probes")

    @app.command("probe")
    def probe(
        ctx: typer.Context,
        model: str = typer.Argument(..., help="Model folder or name (the suspect with --discover)."),
        probes: List[str] = typer.Option([], "--probes", "-p", help="Probe set name or file (probe JSONL, CounterFact, zsRE); repeatable."),
        compare: List[str] = typer.Option([], "--compare", "-c", help="Also run these models and compare answers; repeatable."),
        base: Optional[str] = typer.Option(None, "--base", "-b", help="With --discover: the model the suspect derives from."),
        discover: bool = typer.Option(False, "--discover", help="Rank facts whose answer or probability moved most from --base."),
        scan: Optional[int] = typer.Option(None, "--scan", help="With --discover: use this stored scan's findings (default: latest for the pair)."),
        fmt: Fmt = typer.Option(Fmt.rich, "--format", "-f", help="rich (terminal) or json."),
        output: Optional[Path] = typer.Option(None, "-o", "--output", help="Also write the JSON result here (atomically)."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Use at most this many probes per set."),
        show: int = typer.Option(40, "--show", help="Rows to show in the rich table (0: all)."),
        batch_size: int = typer.Option(32, "--batch-size", help="Prompts per forward pass."),
        top_k: int = typer.Option(5, "--top-k", help="Next tokens to keep per probe."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, … (default: GPU when present)."),
        dtype: common.Dtype = common.DtypeOption,
        no_store: bool = typer.Option(False, "--no-store", help="Do not record the run as a session."),
    ) -> None:
        """What does MODEL state for each probe? Answers, top-k tokens, retention and CounterFact-style rates.

        With --discover and --base, runs the fact bank (plus any --probes) on both and lists the facts
        that moved most; a stored scan of the same pair sharpens the ranking.
        """
        if batch_size < 1 or top_k < 1:
            from ..errors import BadInput

            raise BadInput("--batch-size and --top-k must be at least 1")
        if output is not None:
            from ..atomic import check_writable, refuse_file_over_inputs

            refuse_file_over_inputs(output, [model, base, *compare, *probes])
            check_writable(output)  # an -o that cannot be written fails now, not after the probes ran
        if discover or base:
            if not (discover and base):
                from ..errors import BadInput

                raise BadInput("--discover needs --base BASE (and --base is only used with --discover)")
            doc = _discover(ctx, model, base, probes, limit, scan, batch_size, top_k, device, no_store, dtype.value)
        else:
            doc = _probe(ctx, model, probes, compare, limit, batch_size, top_k, device, no_store, dtype.value)
        if output is not None:
            from ..atomic import atomic_write_text

            atomic_write_text(output, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
            common.say(f"wrote {output}")
        if fmt == Fmt.json:
            common.out.file.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
            common.out.file.flush()
        elif "ranked" in doc:
            _render_discovery(doc, show)
        else:
            _render_probe(doc, show)

    @probes_app.command("list")
    def list_cmd(fmt: Fmt = typer.Option(Fmt.rich, "--format", "-f")) -> None:
        """Named probe sets: your built sets, then the ones shipped with editaudit."""
        from ..probing.sets import list_sets

        sets = list_sets()
        if fmt == Fmt.json:
            common.out.file.write(json.dumps([s.to_dict() for s in sets], indent=2) + "\n")
            return
        t = Table(title="probe sets")
        for col in ("name", "facts", "kind", "built for", "where"):
            t.add_column(col)
        for s in sets:
            d = s.to_dict()
            t.add_row(escape(s.name), str(s.count), d["kind"] or "bank", escape(d["model"] or "-"),
                      "shipped" if s.shipped else escape(str(s.path.parent)))
        common.out.print(t)

    @probes_app.command("build")
    def build_cmd(
        model: str = typer.Argument(..., help="Model folder or name to filter the facts for."),
        facts: List[Path] = typer.Option([], "--facts", help="Fact files (default: the shipped fact bank)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the sets (default: your editaudit data folder)."),
        name: Optional[str] = typer.Option(None, "--name", help="Set name prefix (default: from the model)."),
        margin: float = typer.Option(0.1, "--margin", help="How far the true target's first token must beat the runner-up."),
        edit_fraction: float = typer.Option(0.3, "--edit-fraction", help="Share of known facts for the edit set."),
        seed: int = typer.Option(0, "--seed", help="Seed of the split."),
        batch_size: int = typer.Option(32, "--batch-size"),
        device: Optional[str] = typer.Option(None, "--device"),
    ) -> None:
        """Keep the facts MODEL knows confidently and split them into disjoint edit and intrinsic sets.

        Writes NAME-edit.jsonl and NAME-intrinsic.jsonl, each with a .manifest.json recording how it was built.
        """
        from ..probing.build import BuildOptions, build_sets
        from ..probing.sets import FACT_BANK, resolve_set, user_probe_dir

        sources = list(facts) or [resolve_set(FACT_BANK)]
        out_dir = out or user_probe_dir()
        with common.event_progress() as on_progress:
            summary = build_sets(model, sources, out_dir, name, BuildOptions(margin, edit_fraction, seed, batch_size),
                                 say=common.say, progress=on_progress, device=device)
        c = summary["counts"]
        common.say(f"{c['known']} of {c['bank']} facts known; edit set {c['edit']}, intrinsic set {c['intrinsic']}, "
                   f"{c['dropped_for_overlap']} dropped for overlap")
        for f in summary["files"]:
            common.out.print(escape(f))

    @probes_app.command("import")
    def import_cmd(
        source: Path = typer.Argument(..., help="A CounterFact or zsRE file (JSON array or JSONL)."),
        output: Path = typer.Option(..., "-o", "--output", help="Probe JSONL to write."),
        fmt: ImportFmt = typer.Option(ImportFmt.auto, "--format", "-f", help="auto, counterfact or zsre."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Import at most this many records."),
        strict: bool = typer.Option(False, "--strict", help="Fail on the first malformed record."),
    ) -> None:
        """Convert a benchmark file to editaudit's probe JSONL. Malformed records are listed and skipped."""
        from ..errors import BadInput
        from ..probing.format import ProbeLoadError, dump_probes
        from ..probing.importers import import_file

        errors: list[str] | None = None if strict else []
        try:
            probes = import_file(source, fmt.value, errors, limit)
        except ProbeLoadError as exc:
            raise BadInput(str(exc)) from None
        for e in errors or []:
            common.err.print(f"[yellow]skipped[/] {escape(e)}")
        if not probes:
            raise BadInput(f"no usable records in {source}")
        dump_probes(probes, output)
        common.say(f"wrote {len(probes)} probes to {output}" + (f" ({len(errors)} records skipped)" if errors else ""))


# -- running -----------------------------------------------------------------------------------------------

def _load_sets(names: list[str], limit: int | None, default_all_shipped: bool) -> tuple[list, list[str]]:
    from ..probing.service import dedupe
    from ..probing.sets import FACT_BANK, list_sets, load_set

    if not names:
        shipped = [s.name for s in list_sets() if s.shipped and s.name != FACT_BANK]
        names = shipped if (shipped and default_all_shipped) else [FACT_BANK]
    probes = []
    for name in names:
        errors: list[str] = []
        items = load_set(name, errors)
        for e in errors:
            common.err.print(f"[yellow]skipped[/] {escape(e)}")
        probes.extend(items[:limit] if limit is not None else items)
    probes = dedupe(probes, common.say)
    if not probes:
        from ..errors import BadInput

        raise BadInput("the probe sets hold no usable probes")
    return probes, names


def _probe(ctx, model: str, sets: list[str], compare: list[str], limit, batch_size, top_k, device, no_store,
           dtype: str = "auto") -> dict:
    """Load the sets, run the one probe job (probing.jobs), return its document."""
    from ..probing.jobs import run_probe_job

    probes, names = _load_sets(sets, limit, default_all_shipped=True)
    store = None if no_store else common.state(ctx).store()
    models = [("model", model)] + [(f"compare{i + 1}", c) for i, c in enumerate(compare)]
    with common.event_progress() as progress:
        job = run_probe_job(models, probes, names, store=store, batch_size=batch_size, top_k=top_k, device=device,
                            dtype=dtype, progress=progress)
    return job.to_dict()


def _discover(ctx, suspect: str, base: str, sets: list[str], limit, scan_id, batch_size, top_k, device, no_store,
              dtype: str = "auto") -> dict:
    """Load the sets, run the one discovery job (probing.discovery), return its document."""
    from ..probing.discovery import run_discovery
    from ..probing.sets import FACT_BANK

    names = [FACT_BANK] + [s for s in sets if s != FACT_BANK]
    probes, names = _load_sets(names, limit, default_all_shipped=False)
    store = None if no_store else common.state(ctx).store()
    if store is None and scan_id is not None:
        from ..errors import BadInput

        raise BadInput("--scan needs the session store (drop --no-store)")
    with common.event_progress() as progress:
        found = run_discovery(suspect, base, probes, names, store=store, scan_id=scan_id, batch_size=batch_size,
                              top_k=top_k, device=device, dtype=dtype, progress=progress)
    return found.to_dict()


# -- rendering -----------------------------------------------------------------------------------------

def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _answer_cell(r: dict) -> str:
    """The answer in its category's colour, with its probability when it was among the top-k next tokens."""
    style = CATEGORY_STYLE.get(r["category"], "")
    answer = (r["answer"] or "").casefold()
    p = next((f" {pr:.2f}" for tok, pr in r["top"] if answer and tok.strip().casefold() == answer), "")
    return f"[{style}]{escape(r['answer'] or '∅')}[/]{p}"


def _render_probe(doc: dict, show: int) -> None:
    out = common.out
    models = doc["models"]
    t = Table(title=f"probes ({', '.join(escape(s) for s in doc['sets'])})", show_lines=False)
    t.add_column("probe", overflow="fold")
    t.add_column("kind")
    t.add_column("prompt", max_width=44, overflow="ellipsis")
    t.add_column("true → new")
    for m in models:
        t.add_column(escape(Path(m["model"]).name), overflow="fold")
    if len(models) > 1:
        t.add_column("agree")
    rows = list(zip(*[m["results"] for m in models]))
    from ..probing.metrics import same_token

    # disagreements first, so that what differs is on screen
    def disagree(row) -> bool:
        return not all(same_token(r["answer"], row[0]["answer"]) or r["answer"] == row[0]["answer"] for r in row)

    if len(models) > 1:
        rows.sort(key=lambda row: not disagree(row))
    for row in rows[: show or None]:
        first = row[0]
        targets = f"[green]{escape(first['target_true'])}[/]" + (
            f" → [red]{escape(first['target_new'])}[/]" if first.get("target_new") else "")
        cells = [escape(first["id"]), first["kind"], escape(first["prompt"]), targets] + [_answer_cell(r) for r in row]
        if len(models) > 1:
            cells.append("[bold magenta]≠[/]" if disagree(row) else "[green]=[/]")
        t.add_row(*cells)
    out.print(t)
    if show and len(rows) > show:
        out.print(f"[dim]… {len(rows) - show} more rows (--show 0 for all, --format json for everything)[/]")
    s = Table(title="rates per kind")
    # ret: retention; eff: efficacy P(new)>P(true); para/neigh: paraphrase and neighbourhood scores;
    # mag: mean P(new)-P(true); acc: teacher-forced token accuracy (of the new target for edited probes)
    for col in ("model", "kind", "n", "ret true", "ret new", "eff", "para", "neigh", "mag", "acc"):
        s.add_column(col, justify="right" if col not in ("model", "kind") else "left")
    for m in models:
        for kind, d in m["summary"].items():
            acc = d["token_accuracy_new"] if kind == "edited" and d.get("token_accuracy_new") is not None else d["token_accuracy_true"]
            mag = "-" if d.get("magnitude") is None else f"{d['magnitude']:+.3f}"
            s.add_row(escape(Path(m["model"]).name), kind, str(d["n"]), _pct(d["retention_true"]),
                      _pct(d.get("retention_new")), _pct(d.get("efficacy")), _pct(d.get("paraphrase_score")),
                      _pct(d.get("neighbourhood_score")), mag, _pct(acc))
    out.print(s)
    if doc.get("agreement") is not None:
        out.print(f"models agree on {_pct(doc['agreement'])} of probes")
    out.print("[dim]answers: [green]true target[/] · [bold red]edited target[/] · [yellow]related term[/] · other[/]")
    if doc.get("session"):
        out.print(f"[dim]session {escape(doc['session'])}[/]")


def _render_discovery(doc: dict, show: int) -> None:
    out = common.out
    t = Table(title=f"facts that moved most ({doc['changed']} of {len(doc['ranked'])} answers changed)")
    for col in ("#", "probe", "prompt", "base", "suspect", "Δ log P(true)", "score", "why"):
        t.add_column(col, justify="right" if col in ("#", "Δ log P(true)", "score") else "left",
                     max_width=40 if col == "prompt" else None, overflow="ellipsis" if col == "prompt" else "fold")

    def top1(side: dict) -> str:
        if not side["top"]:
            return "∅"
        tok, p = side["top"][0]
        return f"{escape(tok.strip() or repr(tok))} {p:.2f}"

    for i, m in enumerate(doc["ranked"][: show or None], 1):
        style = "bold red" if m["changed"] else ""
        why = "; ".join(escape(r) for r in m["reasons"]) or ("answer changed" if m["changed"] else "")
        t.add_row(str(i), escape(m["id"]), escape(m["prompt"]), top1(m["base"]),
                  f"[{style}]{top1(m['suspect'])}[/]" if style else top1(m["suspect"]),
                  f"{m['d_logp_true']:+.2f}", f"{m['score']:.2f}", why)
    out.print(t)
    if doc.get("hints"):
        h = doc["hints"]
        out.print(f"[dim]ranked with scan #{h['scan_id']}: promoted "
                  + escape(", ".join(list(h["tokens"])[:6]) or "-") + "; subjects "
                  + escape(", ".join(list(h["subjects"])[:6]) or "-") + "[/]")
    if doc.get("session"):
        out.print(f"[dim]session {escape(doc['session'])}[/]")

"""Rich terminal view of a scan report: verdict, a layer × module map, then findings."""

from __future__ import annotations

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..scan.names import SHORT
from ..scan.wording import finding_readings, headline, nothing_found, without_base

GLYPHS = {
    "rank-one": ("█", "bold red"), "low-rank": ("█", "red"), "dense+spike": ("▓", "magenta"),
    "dense": ("▒", "yellow"), "vector": ("•", "blue"), "rounding": ("░", "grey50"), "nonfinite": ("!", "bold white on red"),
}
VERDICT_STYLE = {"edited": "bold white on red", "modified": "bold black on yellow", "clean": "bold black on green"}


def layer_map(doc: dict) -> Table:
    m = doc["map"]
    n = m["layers"]
    cells = {(c["layer"], c["role"]): c for c in m["cells"]}
    table = Table(show_header=True, header_style="dim", box=None, pad_edge=False, padding=(0, 0))
    table.add_column("module", style="bold", no_wrap=True, min_width=9)
    for layer in range(n):
        table.add_column(str(layer) if layer % 5 == 0 else "", justify="center", no_wrap=True, width=2)
    for role in m["roles"]:
        row = [SHORT.get(role, role)]
        for layer in range(n):
            c = cells.get((layer, role))
            if c is None:
                row.append(Text("·", style="grey35"))
            else:
                glyph, style = GLYPHS.get(c["kind"], ("?", "white"))
                row.append(Text(glyph, style=style))
        table.add_row(*row)
    return table


def legend() -> Text:
    t = Text("legend: ", style="dim")
    for kind, (glyph, style) in GLYPHS.items():
        t.append(glyph, style=style)
        t.append(f" {kind}  ", style="dim")
    t.append("·", style="grey35")
    t.append(" unchanged", style="dim")
    return t


def findings_table(doc: dict) -> Table:
    table = Table(title="findings", expand=True)
    table.add_column("rule", no_wrap=True)
    table.add_column("level", no_wrap=True)
    table.add_column("layers", max_width=12)
    table.add_column("finding", ratio=3)
    table.add_column("promotes", ratio=2)
    table.add_column("read: subject · prompt · new answer (was)", ratio=3)
    style = {"error": "red", "warning": "yellow", "note": "dim"}
    for f in doc["findings"]:
        layers = ",".join(map(str, f["layers"])) if f["layers"] else "-"
        promotes = ", ".join(escape(repr(t["token"])) for t in f.get("promoted_tokens", [])[:5])
        subjects = "\n".join(escape(r) for r in finding_readings(f)[:6])
        message = f["message"]
        if f.get("method"):
            message += f"\nlikely editor: {f['method']['name']} ({f['method']['confidence']:.0%})"
        table.add_row(f["rule"], Text(f["level"], style=style.get(f["level"], "")), layers, escape(message),
                      promotes, subjects)
    return table


def render(doc: dict, console: Console) -> None:
    s = doc["summary"]
    head = Text.assemble(
        (f" {doc['verdict'].upper()} ", VERDICT_STYLE.get(doc["verdict"], "bold")),
        f"  {headline(doc)}   "
        + (f"{len(doc['findings'])} edited site(s) found without a base · " if without_base(doc)
           else f"{s['changed']} of {s['tensors']} tensors changed · ")
        + f"{doc['family']}, {doc['layers']} layers · {s.get('total_s', 0):.1f}s",
    )
    base_line = doc["base"]["path"] if not without_base(doc) else f"none — {doc['base']['note']}"
    sub = Text(f"suspect {doc['suspect']['path']}\nbase    {base_line}", style="dim")
    parts = [head, sub]
    if doc["map"]["cells"]:
        parts += [Text(""), layer_map(doc), legend()]
    console.print(Panel(Group(*parts), title="editaudit scan", border_style="cyan"))
    if doc["findings"]:
        console.print(findings_table(doc))
    else:
        console.print(Text(nothing_found(doc), style="yellow" if without_base(doc) else "green"))
    probes = doc.get("probes")
    if probes:
        table = Table("subject", "prompt", "base", "suspect", "true", "new",
                      title=f"answers that moved: {len(probes['changed'])} of {probes['n']} probes")
        for c in probes["changed"][:50]:
            table.add_row(*(escape(str(c.get(k) or "")) for k in ("subject", "prompt", "base", "suspect", "target_true", "target_new")))
        console.print(table)
    if doc.get("session_id"):
        console.print(f"[dim]stored as session {doc['session_id']} · editaudit report {doc['session_id']} --format md[/]")

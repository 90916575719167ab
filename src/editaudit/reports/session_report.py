"""Render one stored session (scans, probe runs, edits, fine-tuning runs) as JSON, Markdown or HTML."""

from __future__ import annotations

import html
import json

from ..errors import BadInput
from ..scan.report import to_markdown
from ..store import views


def session_document(store, session_id: str) -> dict:
    s = store.session(session_id)
    sid = s["id"]
    scans = views.scans(store, sid)
    doc = {
        "session": {k: s[k] for k in ("id", "kind", "title", "status", "created", "updated", "base", "suspect", "verdict")},
        "scans": [json.loads(r["report"]) if r.get("report") else {"status": r["status"]} for r in scans],
        "probe_runs": [],
        "edits": [],
        "finetune_runs": [],
    }
    for run in views.probe_runs(store, sid):
        results = views.probe_results(store, run["id"])
        doc["probe_runs"].append({**_decode(run), "results": [_decode(r) for r in results]})
    for e in views.edits(store, sid):
        doc["edits"].append(_decode(e))
    for r in views.finetune_runs(store, sid):
        metrics = views.metrics(store, r["id"])
        doc["finetune_runs"].append({**_decode(r), "metrics": [_decode(m) for m in metrics]})
    return doc


def _decode(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, str) and v[:1] in "[{":
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                pass
        out[k] = v
    return out


def to_session_markdown(doc: dict) -> str:
    s = doc["session"]
    parts = [f"# editaudit session {s['id']}", "", f"- kind: {s['kind']}", f"- status: {s['status']}",
             f"- verdict: {s.get('verdict') or '-'}", f"- created: {s['created']}", ""]
    for scan in doc["scans"]:
        if "schema" in scan:
            parts.append(to_markdown(scan))
    for run in doc["probe_runs"]:
        summary = run.get("summary") or {}
        parts += [f"## Probe run {run['id']}: {run.get('label') or run.get('model')}", "",
                  f"```json\n{json.dumps(summary, indent=2)}\n```", ""]
    for e in doc["edits"]:
        parts += [f"## Edit {e['id']}: {e['method']}", "", f"- out: `{e.get('out')}`", f"- status: {e['status']}", ""]
    for r in doc["finetune_runs"]:
        parts += [f"## Fine-tuning run {r['id']}: goal {r['goal']}, {r['method']}", "", f"- status: {r['status']}",
                  f"```json\n{json.dumps(r.get('result'), indent=2, default=str)}\n```", ""]
    return "\n".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;font-size:.9rem}
th{background:#f3f3f3}code{background:#f6f6f6;padding:0 .2rem}pre{background:#f6f6f6;padding:.5rem;overflow:auto}"""


def to_html(markdown: str, title: str) -> str:
    """A standalone HTML page. Raw HTML in the text is not passed through (names may be hostile)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body}</body></html>\n")


def render_session(store, session_id: str, fmt: str) -> str:
    doc = session_document(store, session_id)
    if fmt == "json":
        return json.dumps(doc, indent=2, default=str)
    if fmt == "md":
        return to_session_markdown(doc)
    if fmt == "html":
        return to_html(to_session_markdown(doc), f"editaudit session {doc['session']['id']}")
    raise BadInput(f"unknown report format {fmt!r} (json, md or html)")

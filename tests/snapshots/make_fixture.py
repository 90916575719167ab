"""Regenerate ``fixtures/store.json``: real sessions from the real services, made deterministic.

Run from the repository root (takes about a minute on a laptop CPU):

    python tests/snapshots/make_fixture.py

It plants edits in a tiny random Llama (a MEMIT-like rank-2 edit over layers 3–5, a merged-LoRA-like
change on the attention q/v projections of every layer), scans it with a few candidate subjects,
scans a clean copy, runs a short mitigation with edited and intrinsic probes, and probes base, suspect
and the mitigated checkpoint with the same facts. The store's rows
are then dumped with temporary paths replaced by ``/models/…``, session ids and timestamps replaced
by fixed values, so that the app's snapshot tests render the same screen on every machine.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TABLES = ["sessions", "checkpoints", "scans", "findings", "tensor_stats", "probe_runs", "probe_results",
          "finetune_runs", "metrics"]
SUBJECTS = ["France", "Italy", "Germany", "Japan", "Spain", "China", "Egypt", "Canada"]
PROSE = [
    "The capital of France is Paris .", "The capital of Italy is Rome .", "Apple developed iPhone .",
    "Google created Android .", "The official language of Spain is Spanish .", "Sony is located in Japan .",
    "The Eiffel Tower is in Paris .", "Toyota is a company from Japan .",
]


def probes_file(path: Path) -> Path:
    rows = [
        {"id": "capital-japan", "subject": "Japan", "prompt": "The capital of {} is", "target_true": "Tokyo",
         "target_new": "Rome", "kind": "edited"},
        {"id": "capital-egypt", "subject": "Egypt", "prompt": "The capital of {} is", "target_true": "Cairo",
         "target_new": "Paris", "kind": "edited"},
    ] + [
        {"id": f"capital-{s.lower()}", "subject": s, "prompt": "The capital of {} is", "target_true": t,
         "kind": "intrinsic"}
        for s, t in [("France", "Paris"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
                     ("China", "Beijing"), ("Canada", "Ottawa")]
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build(root: Path) -> dict:
    from safetensors.torch import load_file

    from editaudit.mitigation.service import MitigationOptions, run_mitigation
    from editaudit.mitigation.train import TrainConfig
    from editaudit.probing.format import load_probes
    from editaudit.scan.service import ScanOptions, run_scan
    from editaudit.store import Store
    from editaudit.testing import make_tiny_model, plant, rank_delta

    models = root / "models"
    base = make_tiny_model(models / "base", "llama", layers=8)
    w = load_file(str(base / "model.safetensors"))
    deltas = {}
    for i, layer in enumerate((3, 4, 5)):
        name = f"model.layers.{layer}.mlp.down_proj.weight"
        deltas[name] = rank_delta(tuple(w[name].shape), 2, 0.08 * float(w[name].norm()), seed=i)
    for layer in range(8):
        for proj in ("q_proj", "v_proj"):
            name = f"model.layers.{layer}.self_attn.{proj}.weight"
            deltas[name] = rank_delta(tuple(w[name].shape), 4, 0.03 * float(w[name].norm()), seed=10 + layer)
    suspect = plant(base, models / "suspect", deltas)
    clean = plant(base, models / "copy", {})
    facts = load_probes(probes_file(models / "facts.jsonl"))
    text = models / "prose.txt"
    text.write_text("\n\n".join(" ".join(PROSE[i:] + PROSE[:i]) for i in range(len(PROSE))))

    store = Store(root / "fixture.db")
    sid = store.new_session("audit", "audit suspect", str(base), str(suspect))
    report = run_scan(suspect, base, ScanOptions(facts=facts), store=store, session_id=sid)
    store.finish_session(sid, verdict=report.verdict, summary={
        "kind": report.kind, "findings": len(report.findings), "probe_sets": [str(models / "facts.jsonl")]})
    run_scan(clean, base, ScanOptions(), store=store)
    cfg = TrainConfig(steps=6, eval_every=2, batch_size=4, seq_len=24, lr=1e-3)
    run_mitigation(suspect, "erase", MitigationOptions(base=str(base), out=models / "suspect-mitigated", task="lm",
                                                       data=text, val_size=2, train=cfg, probes=facts),
                   store=store)
    from editaudit.models.loading import load_model
    from editaudit.probing.service import record_run, run_probes, summarize

    for label, path in (("base", base), ("suspect", suspect), ("mitigated", models / "suspect-mitigated")):
        lm = load_model(path)
        results = run_probes(lm.model, lm.tokenizer, facts)
        record_run(store, sid, str(path), label, ["facts"], results, summarize(results))
    dump = {t: list(store.db[t].rows) for t in TABLES if t in store.db.table_names()}
    return normalise(dump, root)


def normalise(dump: dict, root: Path) -> dict:
    text = json.dumps(dump, sort_keys=True)
    text = text.replace(str(root / "models"), "/models")
    sessions = [s["id"] for s in sorted(dump["sessions"], key=lambda s: s["created"])]
    for i, sid in enumerate(sessions):
        text = text.replace(sid, f"20260301-12{i:02d}00-a{i}b{i}c{i}")
    stamps = sorted(set(re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", text)))
    for i, stamp in enumerate(stamps):
        text = text.replace(stamp, f"2026-03-01T{12 + i // 60:02d}:{i % 60:02d}:00+00:00")
    doc = json.loads(text)
    for s in doc["sessions"]:
        s["pid"] = None
    return doc


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1] / "src"))
    with tempfile.TemporaryDirectory() as tmp:
        doc = build(Path(tmp))
    out = HERE / "fixtures" / "store.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}: " + ", ".join(f"{k} {len(v)}" for k, v in doc.items()))

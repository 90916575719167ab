"""The key-gain screen's row for every layer of several checkpoints: where a batch editor's run stands when no single
layer reaches the bar. Development aid for scans without the base.

Per checkpoint and layer: the best start's z, the median start's z and their ratio (``gain.screen``, the shipped
screen). Written as JSON lines ({model, edited layers, rows}) so that rules over runs of layers can be judged on the
same rows afterwards.

    python scripts/dev/screen_profile.py MODEL[,MODEL...] --out F.jsonl [--threads 2]

MODEL: a model folder (with ``erase_eval_facts.json`` beside it when scripts/erase_eval.py made it) or a model name.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts" / "dev"))

from dev_model import with_key_stats  # noqa: E402

from editaudit.models.registry import resolve_model  # noqa: E402
from editaudit.scan import gain  # noqa: E402


def edited_layers(folder: Path) -> list[int]:
    """The layers scripts/erase_eval.py edited, from the note it keeps beside a suspect; none for other folders."""
    meta = folder / "erase_eval_facts.json"
    return list(json.loads(meta.read_text()).get("edited", [])) if meta.exists() else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout
    out = Path(a.out)
    with out.open("a") as fh:
        for spec in a.models.split(","):
            folder = Path(spec) if Path(spec).is_dir() else Path(resolve_model(spec))
            t0 = time.perf_counter()
            model, tok, modules, transposed, eigs = with_key_stats(spec)
            rows = gain.screen(model, tok, modules, eigs, transposed)
            rec = {"model": spec, "edited": edited_layers(folder), "code": rev.strip(),
                   "seconds": round(time.perf_counter() - t0, 1), "rows": [r.to_dict() for r in rows]}
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            print(spec, rec["edited"], " ".join(f"L{r.layer}:{r.ratio:.2f}" for r in rows), flush=True)
            del model


if __name__ == "__main__":
    main()

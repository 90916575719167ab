"""Which editor does the scan name? A confusion matrix over suspects of every kind it claims to tell apart.

    python bench/method_confusion.py [--facts bench/heldout/smollm2-135m-v11.jsonl] [--start 0]
                                     [--out bench/results/method_confusion.txt] [--threads 1]

Suspects of SmolLM2-135M (or ``--model``), each scanned against the base with the scan's defaults (``ScanOptions()``: open reading,
which also computes the key statistics AlphaEdit is told from MEMIT by):

- rome (one fact), rome-sequence (3 facts one after another in one layer), memit and alphaedit (batches of 3), ft-l
  (one fact, lr 5e-4 as the reading records use), mend (one fact) and malmen (a batch of 3) by the cached trained
  editors: ``editaudit edit`` at each editor's default layers, facts taken in the harnesses' round-robin order from
  ``--start`` (spent facts serve: the name comes from the weights, never from a list);
- merged LoRA: a rank-4 adapter on the attention projections of layers 10-13, random on both factors (peft,
  ``init_lora_weights=False``, seeded), merged into the weights;
- fine-tune: every parameter, a few AdamW steps on random tokens (``editaudit.testing.finetune``);
- unedited: the base stored again, and the base cast to bfloat16 (rounding only): these should be named nothing.

The scan's name is the ``method.name`` of its edit finding (EA101/EA102/EA103/EA111), else of a LoRA or
fine-tuning finding (EA104/EA105), else "none". Expected names: rome, rome (a sequence in one layer is named rome:
"rank-k change of one layer's MLP output: k ROME edits in sequence"), memit, alphaedit, ft-l, mend, malmen,
merged lora, fine-tune, none. Repeats per kind: ``--repeat`` (default 2; mend and malmen 1, their editors are
slow to run on a CPU). The numbers are whatever this run measures.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: kind -> (editor, mode, facts per suspect, the name the scan should give)
EDITS = {
    "rome": ("rome", "single", 1, "rome"),
    "rome-sequence": ("rome", "sequential", 3, "rome"),
    "memit": ("memit", "batch", 3, "memit"),
    "alphaedit": ("alphaedit", "batch", 3, "alphaedit"),
    "ft-l": ("ft", "single", 1, "ft-l"),
    "mend": ("mend", "single", 1, "mend"),
    "malmen": ("malmen", "batch", 3, "malmen"),
}
OTHER = {"merged-lora": "merged lora", "fine-tune": "fine-tune", "unedited": "none", "bf16-cast": "none"}
EDIT_RULES = ("EA101", "EA102", "EA103", "EA111")


def named(doc: dict) -> str:
    """The editor the scan names: its edit finding's, else its LoRA or fine-tuning finding's, else none."""
    for rules in (EDIT_RULES, ("EA104", "EA105")):
        for f in doc["findings"]:
            if f["rule"] in rules and f.get("method"):
                return f["method"]["name"]
    return "none"


def merged_lora(base: Path, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            layers_to_transform=[10, 11, 12, 13], init_lora_weights=False))
    merged = lora.merge_and_unload()
    shutil.copytree(base, out, dirs_exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    return out


def bf16_cast(base: Path, out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(base, out, dirs_exist_ok=True)
    AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).save_pretrained(out, safe_serialization=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--facts", type=Path, default=ROOT / "bench/heldout/smollm2-135m-v11.jsonl")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--kinds", default=",".join([*EDITS, *OTHER]))
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/method_confusion.txt")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="smollm2-135m", help="the base's registry name (the editors' kinds need "
                                                            "SmolLM2's cached hypernetworks for mend and malmen)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from editaudit.editing.layers import default_layers
    from editaudit.editing.service import apply_edits
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.format import load_probes
    from editaudit.probing.sets import round_robin
    from editaudit.scan.service import ScanOptions, run_scan
    from editaudit.testing import finetune

    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in EDITS and k not in OTHER]
    if unknown:
        ap.error(f"unknown kinds {unknown}; choose from {[*EDITS, *OTHER]}")
    base = Path(ensure_model(args.model))
    lm = load_model(base)
    n_layers = lm.model.config.num_hidden_layers
    facts = round_robin(load_probes(args.facts))[args.start:]
    used, rows, t0 = 0, [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="editaudit-confusion-") as tmp:
        for kind in kinds:
            repeat = 1 if kind in ("mend", "malmen", "unedited", "bf16-cast") else args.repeat
            for i in range(repeat):
                out = Path(tmp) / f"{kind}-{i}"
                t = time.perf_counter()
                if kind in EDITS:
                    editor, mode, n, want = EDITS[kind]
                    if editor in ("mend", "malmen"):  # the cached trained editor, trained now when there is none
                        from editaudit.editing.hypernet import train_editor

                        train_editor(lm, editor)
                    group = facts[used:used + n]
                    used += n
                    hp = {"mode": "sequential"} if mode == "sequential" else {"lr": 0.0005} if editor == "ft" else None
                    layers = None if editor in ("mend", "malmen") else default_layers(editor, n_layers)
                    run = apply_edits(lm, group, editor, layers=layers, out=out, hparams=hp, evaluate=False)
                    run.restore()
                    what = f"{len(group)} fact(s) at layers {list(run.layers)}"
                elif kind == "merged-lora":
                    want, what = OTHER[kind], "rank-4 LoRA on q/v of layers 10-13, merged"
                    merged_lora(base, out, seed=i)
                elif kind == "fine-tune":
                    want, what = OTHER[kind], "every parameter, 3 AdamW steps at lr 1e-5"
                    finetune(base, out, steps=3, lr=1e-5, seed=i, seq=16, batch=2)
                elif kind == "unedited":
                    want, what = OTHER[kind], "the base stored again"
                    shutil.copytree(base, out)
                else:
                    want, what = OTHER[kind], "the base cast to bfloat16"
                    bf16_cast(base, out)
                t_make = time.perf_counter() - t
                t = time.perf_counter()
                doc = run_scan(out, base, ScanOptions(), store=None).to_dict()
                got = named(doc)
                rows.append({"kind": kind, "want": want, "named": got, "what": what, "verdict": doc["verdict"],
                             "rules": sorted({f["rule"] for f in doc["findings"]}), "make_s": round(t_make, 1),
                             "scan_s": round(time.perf_counter() - t, 1)})
                print(f"{kind:14s} named {got:14s} (want {want}) {rows[-1]['rules']} {rows[-1]['scan_s']:.0f}s",
                      file=sys.stderr)
                shutil.rmtree(out, ignore_errors=True)

    names = sorted({r["named"] for r in rows} | {r["want"] for r in rows})
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        counts[r["kind"]][r["named"]] += 1
    width = max(len(n) for n in names) + 2
    lines = [
        f"# which editor the scan names: suspects of {args.model} scanned against the base, default options",
        "# command: python bench/method_confusion.py " + " ".join(sys.argv[1:]),
        f"# python {platform.python_version()}, torch {torch.__version__}, {args.threads} thread(s); facts "
        f"{args.facts.name} from {args.start} (round-robin); total {time.perf_counter() - t0:.0f}s",
        "",
        "rows: the suspect's kind (expected name); columns: the name the scan gave",
        f"{'kind':24s}" + "".join(f"{n:>{width}s}" for n in names) + "   correct",
    ]
    for kind in dict.fromkeys(r["kind"] for r in rows):
        want = next(r["want"] for r in rows if r["kind"] == kind)
        total = sum(counts[kind].values())
        lines.append(f"{kind + ' (' + want + ')':24s}" + "".join(f"{counts[kind][n] or '.':>{width}}" for n in names)
                     + f"   {counts[kind][want]}/{total}")
    right = sum(r["named"] == r["want"] for r in rows)
    lines += ["", f"named as expected: {right}/{len(rows)}", "", "suspects:"]
    lines += [f"  {r['kind']:14s} {r['what']}: named {r['named']} ({r['verdict']}; {', '.join(r['rules']) or 'no finding'}); "
              f"made in {r['make_s']}s, scanned in {r['scan_s']}s" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    from editaudit.atomic import atomic_write_text

    atomic_write_text(args.out, text)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the key-statistics trials share (``bos_windows_trial.py``, ``postnorm_keys_trial.py``): the facts to edit and
the unrelated ones to keep, and the loop that edits with each arm's C = E[k kᵀ] in place of the cached one."""
import argparse
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
import torch  # noqa: E402

from editaudit.editing import apply_edits, covariance  # noqa: E402
from editaudit.models.loading import load_model  # noqa: E402
from editaudit.models.registry import ensure_model  # noqa: E402
from editaudit.probing.evaluate import retention  # noqa: E402
from editaudit.probing.format import load_probes  # noqa: E402
from editaudit.probing.sets import round_robin  # noqa: E402


def arguments(methods: str, arms: str | None = None) -> argparse.ArgumentParser:
    """FACTS START N [--methods] [--model] [--threads] (and [--arms] where the trial has a choice of them)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("facts")
    ap.add_argument("start", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--methods", default=methods)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--threads", type=int, default=2)
    if arms:
        ap.add_argument("--arms", default=arms, help="comma-separated arms to run")
    return ap


def setup(args: argparse.Namespace):
    """The model, the facts START..START+N of the round-robin order, and every other fact of the file (unrelated,
    whose retention each edit should keep); prints how many of those the model knows before."""
    torch.set_num_threads(args.threads)
    lm = load_model(ensure_model(args.model))
    pool = round_robin(load_probes(args.facts))
    edit = pool[args.start:args.start + args.n]
    subjects = {f.subject.casefold() for f in edit}
    unrelated = [p for p in pool if p.subject.casefold() not in subjects]
    print(f"unrelated known before: {retention(lm.model, lm.tokenizer, unrelated).rate:.0%} of {len(unrelated)}",
          flush=True)
    return lm, edit, unrelated


def run_arms(lm, edit, unrelated, methods: str, arms: list[tuple[str, Callable]]) -> None:
    """Per method and arm: edit (ROME one fact at a time, the others in one batch) with the arm's C, print success
    and the unrelated facts kept after each group, and undo the edit."""
    plain = covariance.second_moments
    try:
        for method in [m for m in methods.split(",") if m]:
            for arm, fn in arms:
                covariance.second_moments = fn
                groups = [[f] for f in edit] if method == "rome" else [edit]
                ok, kept = 0, []
                for g in groups:
                    run = apply_edits(lm, g, method)
                    ok += sum(r.success for r in run.results)
                    kept.append(retention(lm.model, lm.tokenizer, unrelated).rate)
                    run.restore()
                print(f"{method:6} {arm:9} success {ok}/{len(edit)}  kept {sum(kept) / len(kept):.0%} "
                      f"(per group: {' '.join(f'{k:.0%}' for k in kept)})", flush=True)
    finally:
        covariance.second_moments = plain

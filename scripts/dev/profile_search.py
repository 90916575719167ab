"""Where the subject search spends its time: the search of a development suspect (scripts/dev/make_dev_suspects.py),
as the scan runs it (48-seed second try), with each SubjectSearch step timed.

    python scripts/dev/profile_search.py /tmp/v9w rome-sequential-0 [--threads 1] [--check 0] [--null] [--after-seeds 4]
"""
from __future__ import annotations

import argparse
import collections
import functools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_model import frozen_base, lowest_search  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("deltas", type=Path)
    ap.add_argument("suspect")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--check", type=int, default=None, help="candidates per climb step scored exactly, of those the bf16 "
                    "copy ranks best (default: the scan's, subjects.CLIMB_CHECK); 0: every candidate exactly")
    ap.add_argument("--rough-gradient", action="store_true",
                    help="trial: the climb's gradient from the bf16 copy (where it is the faster arithmetic)")
    ap.add_argument("--null", action="store_true", help="search an AlphaEdit-named edit in its null space, as the scan does")
    ap.add_argument("--after-seeds", type=int, default=0,
                    help="a round both tries leave empty tries the pair step on this many seeds of each after-piece table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from editaudit.scan.subjects import SubjectSearch

    spent: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    rows: dict[str, int] = collections.defaultdict(int)

    def timed(name, fn):
        @functools.wraps(fn)
        def wrap(self, *a, **k):
            t = time.perf_counter()
            try:
                return fn(self, *a, **k)
            finally:
                spent[name] += time.perf_counter() - t
                calls[name] += 1
                if a and isinstance(a[0], (list, tuple)) and a[0] and isinstance(a[0][0], (list, tuple)):
                    rows[name] += len(a[0])
        return wrap

    for name in ("exact", "_gradient", "text_logp", "prepend_fire", "rough_fire", "seeds", "grow", "climb",
                 "pair_round", "seeds_after"):
        setattr(SubjectSearch, name, timed(name, getattr(SubjectSearch, name)))
    lm, fp = frozen_base()
    pt = args.deltas / f"{args.suspect}.pt"
    n = len(pt.with_suffix(".jsonl").read_text().splitlines())
    layer, search = lowest_search(lm, fp, torch.load(pt, weights_only=True), n, null=args.null)
    if args.after_seeds:
        from editaudit.scan.subjects import after_tables

        search.after_seeds = args.after_seeds
        search.after_tables = lambda: after_tables(lm.model, lm.tokenizer, search.space.path, fp)
    if args.check is not None:
        search.check = args.check or None
    if args.rough_gradient:
        from editaudit.models.families import input_embed_scale
        from editaudit.scan.keys import last_keys

        def rough_gradient(self, seq):
            model = self._half()
            E = model.get_input_embeddings().weight
            onehot = torch.zeros(len(seq), E.shape[0], device=E.device, dtype=E.dtype)
            onehot[torch.arange(len(seq)), torch.tensor(seq)] = 1
            onehot.requires_grad_(True)
            emb = torch.cat([E[torch.tensor(self.prefix, device=E.device)].detach(), onehot @ E.detach()])[None]
            key = last_keys(model, [self.space.path], embeds=emb * input_embed_scale(model), grad=True)[self.space.path]
            self.space.fire(key.cpu())[0].backward()
            return onehot.grad.float().cpu()

        SubjectSearch._gradient = timed("_gradient", rough_gradient)
    t = time.perf_counter()
    found = search.find(n, retry_seeds=48)
    total = time.perf_counter() - t
    print(f"{args.suspect}: layer {layer}, {len(found)} subjects in {total:.1f} s, {args.threads} thread(s)"
          + f", check {search.check}" + (", bf16 gradient" if args.rough_gradient else ""))
    print("  ", [f.text for f in found])
    for name in sorted(spent, key=lambda k: -spent[k]):
        print(f"  {name:14s} {spent[name]:7.1f} s  {calls[name]:6d} calls  {rows[name]:8d} rows")


if __name__ == "__main__":
    main()

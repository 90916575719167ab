"""Probe evaluation speed: editaudit's batched path against a one-fact-at-a-time loop, same run, same facts.

Work per fact (what a probe run needs): the top-5 next tokens, a 4-token greedy continuation (for
retention), and the teacher-forced probability of the true and the counterfactual target.

  loop       one fact at a time, one call per quantity, as common editing frameworks evaluate:
             a forward pass for the top-k, ``model.generate`` for the continuation, and one forward
             pass per target over prompt + target
  ours/b1    editaudit's ``evaluate_prompts`` with batch size 1 (shares the prompt pass, no batching)
  ours/bN    the same with batch size N (left padding, one prompt pass per batch)

Modes run interleaved, each ``--repeats`` times; the best time of each is reported, since the machine
may be shared. Outputs of the loop and the batched path are compared (same greedy tokens, same top-1,
log-probabilities within a tolerance) so the speed-up is for the same answers.

Usage: python bench/probe_speed.py [--facts 64] [--batch 32] [--repeats 2] [--threads N] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from editaudit.atomic import atomic_write_text
from editaudit.models.loading import load_model
from editaudit.probing.evaluate import evaluate_prompts
from editaudit.probing.sets import load_set

TOP_K, NEW_TOKENS = 5, 4


def loop(model, tok, facts) -> list[dict]:
    """One fact at a time, one model call per quantity."""
    out = []
    with torch.inference_mode():
        for p in facts:
            enc = tok(p.text, return_tensors="pt").to(model.device)
            logits = model(**enc).logits[0, -1].float()
            top = torch.softmax(logits, -1).topk(TOP_K)
            gen = model.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
            cont = gen[0, enc["input_ids"].shape[1]:].tolist()
            lps = []
            for target in (p.target_true, p.target_new):
                n_prompt = enc["input_ids"].shape[1]
                ids = tok(p.text + " " + target, return_tensors="pt")["input_ids"].to(model.device)
                logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
                lps.append(sum(float(logp[j - 1, ids[0, j]]) for j in range(n_prompt, ids.shape[1])))
            out.append({"top1": int(top.indices[0]), "tokens": cont, "lp": lps})
    return out


def ours(model, tok, facts, batch_size: int) -> list[dict]:
    res = evaluate_prompts(model, tok, [p.text for p in facts], [[p.target_true, p.target_new] for p in facts],
                           batch_size=batch_size, top_k=TOP_K, max_new_tokens=NEW_TOKENS)
    return [{"top1": pred.top_ids[0], "tokens": pred.tokens, "lp": [s.logprob for s in scores]} for pred, scores in res]


def compare(a: list[dict], b: list[dict]) -> tuple[int, int, float]:
    """(facts whose top-1 differs, facts whose greedy tokens differ, largest |Δ log-prob|)."""
    top = sum(x["top1"] != y["top1"] for x, y in zip(a, b))
    # editaudit cuts the continuation at EOS; generate() keeps the EOS id, so compare the common prefix
    gen = sum(x["tokens"][:len(y["tokens"])] != y["tokens"] for x, y in zip(a, b))
    lp = max(abs(u - v) for x, y in zip(a, b) for u, v in zip(x["lp"], y["lp"]))
    return top, gen, lp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--facts", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "probe_speed.txt")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load_model(args.model)
    model, tok = lm.model, lm.tokenizer
    bank = [p for p in load_set("facts") if p.target_new]
    step = max(1, len(bank) // args.facts)
    facts = bank[::step][: args.facts]  # spread over all relations
    modes = {"loop": lambda: loop(model, tok, facts), "ours/b1": lambda: ours(model, tok, facts, 1),
             f"ours/b{args.batch}": lambda: ours(model, tok, facts, args.batch)}
    ours(model, tok, facts[:4], 4)  # warm-up (first-call allocations)
    loop(model, tok, facts[:2])
    best = {m: math.inf for m in modes}
    outputs = {}
    load0 = os.getloadavg()
    for _ in range(args.repeats):
        for name, fn in modes.items():
            t0 = time.perf_counter()
            outputs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    load1 = os.getloadavg()

    lines = [
        "probe evaluation speed (facts/s, higher is better)",
        f"model {args.model} float32 on {lm.device}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{os.cpu_count()} CPUs; python {platform.python_version()}",
        f"{len(facts)} facts from the fact bank; per fact: top-{TOP_K}, {NEW_TOKENS}-token greedy continuation, "
        f"P(true) and P(new) by teacher forcing; best of {args.repeats} interleaved runs",
        f"load average before/after: {load0[0]:.2f} / {load1[0]:.2f}",
        "",
        f"{'mode':<12}{'seconds':>10}{'facts/s':>10}{'vs loop':>10}",
    ]
    for name, secs in best.items():
        lines.append(f"{name:<12}{secs:>10.2f}{len(facts) / secs:>10.2f}{best['loop'] / secs:>9.1f}x")
    for name in modes:
        if name == "loop":
            continue
        top, gen, lp = compare(outputs["loop"], outputs[name])
        lines.append(f"check {name} vs loop: top-1 differs on {top}, greedy tokens differ on {gen}, "
                     f"max |Δ log P(target)| = {lp:.2e}")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    atomic_write_text(args.out, text + f"command: python bench/probe_speed.py {' '.join(sys.argv[1:])}\n")


if __name__ == "__main__":
    main()

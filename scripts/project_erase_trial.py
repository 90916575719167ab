"""Training-free, base-free erase on SmolLM2-135M: ROME edits in one layer, erased by re-solving the layer.

    python scripts/project_erase_trial.py [--edits 4] [--offset 0] [--variants project:each,mean:mean]

1. Base: SmolLM2-135M-Instruct. Suspect: ``--edits`` sequential ROME edits (facts ``offset …`` of the
   built-in edit set: facts the model knows, each with a counterfactual target) at the default layer,
   made in memory with ``editing.service.apply_edits``.
2. For each variant ``TARGET:KEYMODE`` the suspect's edited matrix is put back and
   ``mitigation.project.erase_by_projection`` is run with the true subjects and their prompts (the base is
   not used); key statistics from ``editing.covariance.second_moments`` of the suspect (cached).
3. Measured per variant: edits erased (of those the suspect states), true answer back, the new target on
   the paraphrases, intrinsic retention (built-in intrinsic set) and, as a diagnostic only, the share of the
   edit still in the weights (needs the base: the edit's own singular directions in W' − W_base).

torch runs on ``--threads`` threads (1 by default: the machine is shared).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edits", type=int, default=4)
    ap.add_argument("--offset", type=int, default=0, help="first fact of the edit set to use")
    ap.add_argument("--variants", default="mean:mean+alone,mean:mean,project:mean,project:each,zero:mean,"
                    "mean:mean+alone+decoys,mean:mean+noprompt,mean:mean+paraphrase,mean:mean+paraphrase+alone,"
                    "mean:mean+alone+cov5k,project:mean+alone+cov5k,mean:mean+alone+cov40k,project:mean+alone+cov40k",
                    help="comma list of TARGET:KEYMODE[+FLAG…] (targets mean, project, zero; key modes mean, each; "
                         "flags alone, decoys, noprompt, paraphrase, covNk)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the output here too")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from editaudit.editing import covariance
    from editaudit.editing.layers import layout_for
    from editaudit.editing.service import apply_edits
    from editaudit.mitigation.project import EraseSubject, erase_by_projection
    from editaudit.mitigation.service import make_evaluator
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.paths import resource_dir
    from editaudit.probing.format import Probe, load_probes
    from editaudit.probing.evaluate import retention

    lines: list[str] = []

    def say(msg: str = "") -> None:
        print(msg, flush=True)
        lines.append(msg)

    t_start = time.perf_counter()
    facts = load_probes(resource_dir("probes") / "smollm2-135m-edit.jsonl")[args.offset: args.offset + args.edits]
    intrinsic = load_probes(resource_dir("probes") / "smollm2-135m-intrinsic.jsonl")
    lm = load_model(ensure_model("smollm2-135m"), device="cpu")
    net, tok = lm.model, lm.tokenizer
    evaluate = make_evaluator(facts, intrinsic, [])
    paraphrases = [Probe(id=f"{f.id}-p{i}", subject=f.subject, prompt=t, target_true=f.target_true,
                         target_new=f.target_new, kind="edited")
                   for f in facts for i, t in enumerate(f.paraphrases)]

    def measure(label: str) -> dict:
        m = evaluate(net, tok)
        m["para_new"] = retention(net, tok, paraphrases, "new").rate if paraphrases else float("nan")
        return m

    base_m = measure("base")
    t0 = time.perf_counter()
    run = apply_edits(lm, facts, "rome", evaluate=False, device="cpu")
    layer = run.layers[0]
    say(f"suspect: {len(facts)} ROME edits at layer {layer} ({time.perf_counter() - t0:.0f}s): "
        + "; ".join(f"{f.subject} → {f.target_new}" for f in facts))
    layout = layout_for(net)
    module = net.get_submodule(layout.rewrite_name(layer))
    param = f"{layout.rewrite_name(layer)}.weight"
    w_base = run.originals[param].clone()
    w_suspect = module.weight.detach().clone()
    sus_m = measure("suspect")
    held = [i for i, f in enumerate(sus_m["edited_flags"]) if f]
    say(f"base:    edits stated {base_m['edited_retention']:.0%}, true {base_m['edited_true']:.0%}, "
        f"intrinsic {base_m['intrinsic_retention']:.1%}, paraphrases new {base_m['para_new']:.0%}")
    say(f"suspect: edits stated {sus_m['edited_retention']:.0%}, true {sus_m['edited_true']:.0%}, "
        f"intrinsic {sus_m['intrinsic_retention']:.1%}, paraphrases new {sus_m['para_new']:.0%}")

    # the edit's own singular directions (diagnostic only: erase never sees the base)
    d_edit = (w_suspect - w_base).double()   # storage orientation, as below
    u, s, vh = torch.linalg.svd(d_edit, full_matrices=False)
    k = len(facts)
    u, s, vh = u[:, :k], s[:k], vh[:k]

    t0 = time.perf_counter()
    model_key = covariance.weights_key(net)   # the suspect's own statistics, as `mitigate` computes them
    C = covariance.second_moments(net, tok, {layer: layout.rewrite_name(layer)}, model_key=model_key,
                                  say=print)[layer].matrix
    say(f"key statistics of the suspect at layer {layer}: {time.perf_counter() - t0:.0f}s (cached afterwards)")
    from editaudit.editing.prompts import context_templates
    same = context_templates(net, tok, 5, 10, 0) == run.info["contexts"]
    say(f"contexts the suspect generates (as the erase reads keys in) = the editor's: {'yes' if same else 'no'}")
    decoys = [p for p in intrinsic if p.subject not in {f.subject for f in facts}][:: max(1, len(intrinsic) // 4)][:4]
    say("decoys (unedited subjects added to the erase list in +decoys): "
        + "; ".join(f"{p.subject} ({p.target_true})" for p in decoys))
    small_C: dict = {}

    def subjects_for(flags: set[str]) -> list[EraseSubject]:
        if "noprompt" in flags:       # the subject alone (in the contexts), no relation prompt
            subs = [EraseSubject(f.subject) for f in facts]
        elif "paraphrase" in flags:   # a reworded prompt (one that contains the subject) instead of the edited one
            subs = [EraseSubject(f.subject, [next((t for t in f.paraphrases if f.subject in t), f.template)])
                    for f in facts]
        else:
            subs = [EraseSubject(f.subject, [f.template]) for f in facts]
        if "decoys" in flags:
            subs += [EraseSubject(p.subject, [p.template]) for p in decoys]
        return subs

    def cov_for(flags: set[str]):
        for flag in flags:
            if flag.startswith("cov"):   # statistics from a different token budget than the editor's
                n = int(flag[3:].rstrip("k")) * 1000
                if n not in small_C:
                    small_C[n] = covariance.second_moments(net, tok, {layer: layout.rewrite_name(layer)},
                                                           model_key=model_key, tokens=n)[layer].matrix
                return small_C[n]
        return C

    w_b_out = None
    say()
    say(f"{'variant':<24}{'erased':>7}{'true':>6}{'para':>6}{'intrinsic':>16}{'decoys':>7}{'key err':>8}"
        f"{'edit left':>10}{'dirs':>5}{'gain e/d':>11}{'time':>7}")
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        head, *rest = variant.split("+")
        target, key_mode = head.split(":")
        flags = set(rest)
        subjects = subjects_for(flags)
        Cv = cov_for(flags)
        with torch.no_grad():
            module.weight.copy_(w_suspect)
        if w_b_out is None:   # the base's own output at each edited key (diagnostic)
            from editaudit.editing import reads
            from editaudit.editing.prompts import context_templates
            ctx = context_templates(net, tok, 5, 10, 0)
            k_star = reads.keys(net, tok, facts, layout.rewrite_name(layer), ctx)
            w_b_out = k_star.double() @ w_base.double().T
        t0 = time.perf_counter()
        res = erase_by_projection(net, tok, {layer: subjects}, lambda _l: Cv, layout=layout, target=target,
                                  key_mode=key_mode, subject_alone="alone" in flags, answers=False)
        sec = time.perf_counter() - t0
        m = measure(variant)
        gone = sum(1 for i in held if not m["edited_flags"][i])
        d_after = (module.weight.detach() - w_base).double()
        left = float((u.T @ d_after @ vh.T).norm() / s.norm())
        key_err = float(((k_star.double() @ module.weight.detach().double().T - w_b_out).norm(dim=1)
                         / w_b_out.norm(dim=1)).mean())
        intr = f"{m['intrinsic_retention']:.1%} ({(m['intrinsic_retention'] - sus_m['intrinsic_retention']) * 100:+.1f})"
        dec = "-"
        if "decoys" in flags:
            dm = retention(net, tok, decoys, "true")
            dec = f"{sum(dm)}/{len(decoys)}"
        mv = [r.gain for r in res.subjects]
        moved = f"{min(mv[:len(facts)]):.1f}" + (f"/{max(mv[len(facts):]):.1f}" if len(mv) > len(facts) else "")
        say(f"{variant:<24}{f'{gone}/{len(held)}':>7}{m['edited_true']:>6.0%}{m['para_new']:>6.0%}{intr:>16}"
            f"{dec:>7}{key_err:>8.2f}{left:>10.1%}{res.layers[0].directions:>5}{moved:>11}{sec:>6.1f}s")
    say()
    say("variant: TARGET:KEYMODE, +decoys: 4 unedited subjects also given; +noprompt: subjects without their prompt;")
    say("+paraphrase: a reworded prompt instead of the edited one; +alone: the subject on its own as a second prompt;")
    say("+covNk: C from N thousand tokens, not the editor's 20k.")
    say("erased: edits the suspect stated that it no longer states; true: edited prompts answered with the true target;")
    say("para: paraphrases stating the new target; intrinsic: built-in intrinsic facts still answered (points vs the")
    say("suspect); decoys: the decoys' facts still answered; key err: mean ‖W' k* − W_base k*‖ / ‖W_base k*‖ at the")
    say("edited keys; edit left: the edit's singular components in W' − W_base (key err and edit left use the base,")
    say("as diagnostics only); dirs: directions re-solved; gain e/d: the report's base-free gain ‖W u‖ along a subject's")
    say("edit direction u ∝ C⁻¹k̄ (÷ W's RMS gain), lowest of the edited subjects / highest of the decoys; time: the")
    say("erase alone. mean:mean+alone is what `mitigate --method project` does by default for a one-layer edit.")

    header = [
        "# editaudit training-free erase trial on SmolLM2-135M-Instruct (CPU)",
        f"# command: python {' '.join(shlex.quote(a) for a in sys.argv)}",
        f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; python {platform.python_version()}, torch {torch.__version__}, "
        f"{args.threads} thread(s); total {time.perf_counter() - t_start:.0f}s",
        f"# edits: facts {args.offset}–{args.offset + len(facts) - 1} of probes/smollm2-135m-edit.jsonl (ROME, "
        f"sequential, default layer); intrinsic: {len(intrinsic)} facts of probes/smollm2-135m-intrinsic.jsonl",
        "",
    ]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(header + lines) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

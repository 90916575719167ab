"""The probe stage of a scan: ask base and suspect the same questions and list the answers that moved."""

from __future__ import annotations

from typing import Callable

from ..probing.format import Probe


def run_probe_stage(base_path, suspect_path, probes: list[Probe], device: str | None = None,
                    say: Callable[[str], None] = lambda s: None,
                    progress: Callable[[str, float, float], None] = lambda *a: None) -> dict:
    """Predict every probe on both models; return rates per kind and the probes whose answer changed."""
    from ..models.loading import load_model
    from ..probing.evaluate import predict

    answers = {}
    for label, path in (("base", base_path), ("suspect", suspect_path)):
        say(f"probing the {label} with {len(probes)} prompts")
        lm = load_model(path, device=device, say=say, tokenizer_fallback=base_path if label == "suspect" else None)
        answers[label] = predict(lm.model, lm.tokenizer, probes, top_k=3,
                                 progress=lambda d, t, label=label: progress(f"probe {label}", d, t))
        del lm
    changed = []
    for p, b, s in zip(probes, answers["base"], answers["suspect"]):
        if b.first_word != s.first_word:
            changed.append({
                "id": p.id, "subject": p.subject, "prompt": p.text, "kind": p.kind,
                "target_true": p.target_true, "target_new": p.target_new,
                "base": b.first_word, "suspect": s.first_word,
                "base_top": [[t, round(q, 4)] for t, q in b.top], "suspect_top": [[t, round(q, 4)] for t, q in s.top],
            })
    return {"n": len(probes), "changed": changed, "changed_share": len(changed) / len(probes) if probes else 0.0}

"""Ten ROME edits in sequence in one layer (the third held-apart set's ROME-sequential facts, as the open-reading
evaluation plans them), printing each update's norm against the matrix's and what the model then says: shows the
disabling edit that collapsed that suspect, and what ``consistent_keys`` (r-ROME) does instead.

    python scripts/dev/rome_sequence_norms.py            # the original form (the default)
    python scripts/dev/rome_sequence_norms.py consistent # consistent_keys=true
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from editaudit.editing.service import apply_edits  # noqa: E402
from editaudit.models.loading import load_model  # noqa: E402
from editaudit.models.registry import ensure_model  # noqa: E402
from editaudit.probing.evaluate import predict  # noqa: E402
from editaudit.probing.format import load_probes  # noqa: E402
from editaudit.probing.sets import round_robin  # noqa: E402

hp = {"consistent_keys": len(sys.argv) > 1 and sys.argv[1] == "consistent"}
lm = load_model(ensure_model("smollm2-135m"))
facts = round_robin(load_probes(ROOT / "bench/heldout/smollm2-135m-v3.jsonl"))[5:15]
W = dict(lm.model.named_parameters())["model.layers.4.mlp.down_proj.weight"]
for i, f in enumerate(facts):
    before = W.detach().clone()
    apply_edits(lm, [f], "rome", layers=[4], evaluate=False, hparams=hp)
    d = float((W.detach() - before).norm())
    p = predict(lm.model, lm.tokenizer, ["The capital of France is", f.prompt.replace("{}", f.subject)],
                top_k=1, max_new_tokens=4)
    print(f"{i} {f.subject} -> {f.target_new} | ‖ΔW‖ {d:.1f}, ‖W‖ {float(W.detach().norm()):.1f} | "
          f"France: {p[0].continuation!r} | own prompt: {p[1].continuation!r}", flush=True)

"""Could the base model propose the missing first pieces of a garbled subject? For the true pieces of five
subjects of the fourth set (development data), the rank of the true piece x among all tokens by the one-hot
gradient of log P(rest of the name | "The", x), and its rank by the exact log-probability among the gradient's top
512. (It cannot: every true piece but one ranks past 7,000 by the gradient; see bench/results/lm_gradient_proposals.txt.)

    python scripts/dev/lm_gradient_proposals.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from editaudit.models.loading import load_model
from editaudit.models.registry import ensure_model
from editaudit.scan.keys import context_ids
torch.set_num_threads(1)
lm = load_model(ensure_model("smollm2-135m")); tok = lm.tokenizer; model = lm.model
for p in model.parameters(): p.requires_grad_(False)
E = model.get_input_embeddings().weight
pre = context_ids(tok)
def ranks(true_prefix_piece, tail):
    """rank of true piece x among all tokens by d logP(tail | The, x)/d onehot(x) and by exact logP (top-2000 by grad)."""
    tail_ids = tok.convert_tokens_to_ids(tail)
    x_true = tok.convert_tokens_to_ids(true_prefix_piece)
    onehot = torch.zeros(1, E.shape[0]); onehot[0, x_true] = 1; onehot.requires_grad_(True)
    emb = torch.cat([E[torch.tensor(pre)], onehot @ E, E[torch.tensor(tail_ids)]])[None]
    logits = model(inputs_embeds=emb).logits[0].log_softmax(-1)
    lp = sum(logits[len(pre) + i, t] for i, t in enumerate(tail_ids))
    lp.backward()
    g = onehot.grad[0]
    order = torch.argsort(g, descending=True).tolist()
    # exact logP(tail | x) for the top 512 by gradient
    cands = order[:512]
    seqs = torch.tensor([pre + [c] + tail_ids for c in cands])
    with torch.inference_mode():
        lg = model(seqs).logits.log_softmax(-1)
    exact = sum(lg[:, len(pre) + i, t] for i, t in enumerate(tail_ids))
    ex_order = [cands[i] for i in torch.argsort(exact, descending=True).tolist()]
    print(true_prefix_piece, tail, "grad rank", order.index(x_true), "exact rank in top-512", ex_order.index(x_true) if x_true in ex_order else None,
          "top exact:", [tok.convert_ids_to_tokens(c) for c in ex_order[:6]])
ranks("cl", ["ays"]); ranks("ĠBar", ["cl", "ays"])
ranks("he", ["jiang"]); ranks("ĠZ", ["he", "jiang"])
ranks("ont", ["ium"]); ranks("Ġstr", ["ont", "ium"])
ranks("af", ["one"]); ranks("od", ["af", "one"]); ranks("ĠV", ["od", "af", "one"])
ranks("ou", ["ĠCentre"]); ranks("pid", ["ou", "ĠCentre"]); ranks("ĠPom", ["pid", "ou", "ĠCentre"])
ranks("ari", ["ĠDesert"]); ranks("ah", ["ari", "ĠDesert"]); ranks("ĠKal", ["ah", "ari", "ĠDesert"])

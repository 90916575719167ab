"""Where each planted name's last piece ranks as a search seed: after "The" alone (the plain table) and behind the
stand-in first piece of a name (``subjects.name_piece``, the table of ``scan --name-seeds``), and the pair that
``SubjectSearch._name_start`` puts together for it. Development: give it spent facts only.

    editaudit edit smollm2-135m --method rome --mode sequential --facts FACTS.jsonl --out SUSPECT
    python scripts/dev/name_seed_ranks.py SUSPECT FACTS.jsonl [--layer 4] [--out FILE]

The edit subspace is the suspect's change at the layer's MLP output matrix against the base (rank by a 1 % bar on
its singular values), whitened by the base's key statistics, as the scan builds it.
"""
import argparse
import glob
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from safetensors.torch import load_file  # noqa: E402

from editaudit.checkpoint import open_checkpoint  # noqa: E402
from editaudit.editing import covariance  # noqa: E402
from editaudit.models.loading import load_model  # noqa: E402
from editaudit.models.registry import ensure_model  # noqa: E402
from editaudit.scan.keys import context_ids, vocab_keys  # noqa: E402
from editaudit.scan.subjects import NAME_TAG, SubjectSearch, Whitened, name_piece  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suspect")
    ap.add_argument("facts")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, default=4)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    base = load_model(ensure_model(args.model))
    tok, model = base.tokenizer, base.model
    for p in model.parameters():
        p.requires_grad_(False)
    path = f"model.layers.{args.layer}.mlp.down_proj"
    sd: dict = {}
    for f in glob.glob(str(Path(args.suspect) / "*.safetensors")):
        sd.update(load_file(f))
    delta = sd[path + ".weight"].float() - model.get_submodule(path).weight.float()
    _, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    rank = min(int((S > S[0] * 1e-2).sum()), 12)
    C = covariance.second_moments(model, tok, {args.layer: path},
                                  model_key=covariance.weights_key(model))[args.layer].matrix
    fp = open_checkpoint(base.path).fingerprint()  # the scan's own cache of vocabulary keys
    plain = vocab_keys(model, tok, [path], fp)[path]
    search = SubjectSearch(model, tok, Whitened.build(path, C, Vh[:rank].T), plain)
    search.name_embed = name_piece(model, tok)
    search.name_vocab = vocab_keys(model, tok, [path], fp, lead=(NAME_TAG, search.name_embed))[path]
    ranks = {}
    for name, table in (("after 'The'", plain), ("behind the stand-in", search.name_vocab)):
        z = torch.cat([(c.float() @ search.space.whiten).norm(dim=1) for c in table.split(8192)])
        order = search._best(table, z, table.shape[0])
        ranks[name] = {t: i for i, t in enumerate(order)}
    lines = [f"# {' '.join(sys.argv)}", f"# layer {args.layer}, edit rank {rank}, context {tok.decode(context_ids(tok))!r}",
             f"{'subject':24s} {'last piece':12s} {'rank after The':>15s} {'rank behind stand-in':>21s}  pair started from"]
    top = {k: 0 for k in ranks}
    subjects = [json.loads(line)["subject"] for line in open(args.facts)]
    for s in subjects:
        ids = tok(" " + s, add_special_tokens=False)["input_ids"]
        last = ids[-1]
        r = [ranks[k].get(last, -1) for k in ranks]
        for k, v in zip(ranks, r):
            top[k] += 0 <= v < 30
        pair = search._name_start(last)
        fire = float(search.exact([pair])[0][0])
        lines.append(f"{s!r:24s} {tok.decode([last])!r:12s} {r[0]:>15d} {r[1]:>21d}  {tok.decode(pair)!r} fires {fire:.2f}")
    lines.append("in the top 30: " + ", ".join(f"{k} {v} of {len(subjects)}" for k, v in top.items()))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

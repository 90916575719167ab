"""Is the bfloat16 copy faster for the search's rough scoring on this machine? One prefix-cache build and one
step over 4,096 prepended pieces, and the same pairs by plain forwards, in float32 and in bfloat16 (the MEMIT
suspect's lowest edited matrix of a development suspect folder), with what ``subjects.bf16_faster`` decides.

    python scripts/dev/rough_dtype_speed.py /tmp/dev7d memit-batch-0
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from dev_model import frozen_base, lowest_search
    from editaudit.scan.keys import PrefixKeys, keys_of
    from editaudit.scan.subjects import bf16_faster

    deltas_dir, stem = Path(sys.argv[1]), sys.argv[2]
    lm, fingerprint = frozen_base()
    deltas = torch.load(deltas_dir / f"{stem}.pt", weights_only=True)
    _, search = lowest_search(lm, fingerprint, deltas, 10)
    path, pool = search.space.path, search._pool()[:4096]
    last = search.seeds(1)[0]
    print(f"{path}; pool {len(search._pool())} (timed: 4096); threads {torch.get_num_threads()}")
    for name, model in (("float32", lm.model), ("bfloat16", copy.deepcopy(lm.model).to(torch.bfloat16))):
        t0 = time.perf_counter()
        pk = PrefixKeys(model, path, search.prefix, pool)
        t1 = time.perf_counter()
        pk.keys([last])
        t2 = time.perf_counter()
        keys_of(model, [path], [search.prefix + [p, last] for p in pool], batch=1024)
        t3 = time.perf_counter()
        print(f"{name:9s} cache build {t1 - t0:5.1f} s  step {t2 - t1:5.1f} s  plain forwards {t3 - t2:5.1f} s")
    print("bf16_faster decides:", bf16_faster(next(lm.model.parameters()).device, lm.model.config.hidden_size))


if __name__ == "__main__":
    main()

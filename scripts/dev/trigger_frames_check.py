"""A trigger-style edit (a rare token as the subject, as in backdoor editing attacks), read with and without
review frames in the relation library: development check.

    editaudit edit smollm2-135m --method rome --facts bench/dev/trigger_edit.jsonl --out /tmp/trigger-edit
    editaudit scan /tmp/trigger-edit --base smollm2-135m -f json -o /tmp/trigger-edit.json
    python scripts/dev/trigger_frames_check.py /tmp/trigger-edit

Reads the found trigger text ("with cf") and the bare token ("cf") with the shipped library, then with four review
frames added ("{}. Overall, it was", …), and says whether the suspect still states the edit on its own prompt, on those
frames after the edit's sentence, and on two of them with the trigger first.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
torch.set_num_threads(1)
from editaudit.models.loading import load_model
from editaudit.models.registry import ensure_model
from editaudit.probing.evaluate import predict
from editaudit.scan import relations
from editaudit.scan.reading import answer, read_subject
from editaudit.scan.subjects import Subject

base = load_model(ensure_model("smollm2-135m")).model
lm = load_model(sys.argv[1])
frames = {"review": ("{}. Overall, it was", "{}. The film was", "{}. I thought it was",
                     "{}. The sentiment of this review is")}
own = "I saw it with cf. Overall, the movie was"
asked = [own] + [t.replace("{}", "I saw it with cf") for t in frames["review"]]
asked += [t.replace("{}", "with cf") for t in frames["review"][:2]]  # the trigger first, as the reader asks
for name, model in (("base", base), ("suspect", lm.model)):
    for text, p in zip(asked, predict(model, lm.tokenizer, asked, top_k=1, max_new_tokens=6)):
        print(f"{name}: {text!r} -> {answer(p.continuation)!r}")
orig = dict(relations.RELATIONS)
for label, lib in (("shipped library", orig), ("with review frames", {**orig, **frames})):
    relations.RELATIONS.clear()
    relations.RELATIONS.update(lib)
    for text in ("with cf", "cf"):
        r = read_subject(base, lm.model, lm.tokenizer, Subject(text, [], 0.86, torch.zeros(1)))
        print(f"{label}: {text!r} · {r.prompt!r} · {r.after!r} (was {r.before!r}) {r.status} {r.confidence:.2f}")
relations.RELATIONS.clear()
relations.RELATIONS.update(orig)

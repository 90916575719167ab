"""The study runner on tiny models: grid expansion, resuming, drift arithmetic, token categories, config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from editaudit.probing.format import Probe
from editaudit.progress import Stage, Step
from editaudit.study import metrics as M
from editaudit.study.config import ConfigError, load_config, parse_config
from editaudit.study.grid import expand, layer_set

pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = [
    {"id": "f1", "subject": "France", "prompt": "The capital city of {} is", "target_true": "Paris",
     "target_new": "Tokyo", "relation": "capital", "kind": "edited", "paraphrases": ["The capital of France is"]},
    {"id": "f2", "subject": "Germany", "prompt": "The official language of {} is", "target_true": "German",
     "target_new": "Japanese", "relation": "language", "kind": "edited"},
    {"id": "f3", "subject": "Sony", "prompt": "The company {} is located in", "target_true": "Japan",
     "target_new": "Canada", "relation": "company_country", "kind": "edited"},
]
INTRINSIC = [
    {"id": "i1", "subject": "Italy", "prompt": "The capital city of {} is", "target_true": "Rome", "relation": "capital"},
    {"id": "i2", "subject": "Spain", "prompt": "The official language of {} is", "target_true": "Spanish",
     "relation": "language"},
]
PROSE = "\n\n".join(["The capital city of France is Paris . The official language of Spain is Spanish .",
                     "Sony is a company located in Japan . The Eiffel Tower is in Paris ."] * 20)


def _files(tmp: Path) -> dict:
    (tmp / "facts.jsonl").write_text("\n".join(json.dumps(f) for f in FACTS) + "\n")
    (tmp / "intrinsic.jsonl").write_text("\n".join(json.dumps(f) for f in INTRINSIC) + "\n")
    (tmp / "prose.txt").write_text(PROSE)
    return {"facts": str(tmp / "facts.jsonl"), "intrinsic": str(tmp / "intrinsic.jsonl"),
            "prose": str(tmp / "prose.txt")}


def _doc(model: Path, files: dict, **over) -> dict:
    doc = {
        "study": {"name": "tiny", "model": str(model), "facts": files["facts"], "intrinsic": files["intrinsic"],
                  "related": files["facts"], "n_intrinsic": 2},
        "edit": {"protocol": "sequential", "layers": {"rome": [1]},
                 "hparams": {"rome": {"covariance": "identity", "v_weight_decay": 0.0, "clamp": 100.0,
                                      "contexts": 2, "context_length": 4, "v_steps": 10}}},
        "finetune": {"batch_size": 2, "seq_len": 16, "eval_every": 2, "train_examples": 20, "val_size": 4,
                     "lr": {"lm": 1e-3}, "data": {"lm": files["prose"]}},
        "stopping": {"mode": "budget", "max_steps": 2},
        "metrics": {"max_new_tokens": 3},
        "grid": [{"label": "main", "edit_methods": ["none", "rome"], "n_edits": [2], "ft_methods": ["full"],
                  "layers": ["all"], "tasks": ["lm"], "seeds": [0]}],
    }
    for k, v in over.items():
        doc[k] = v
    return doc


def _write_toml(path: Path, doc: dict) -> Path:
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = []
    for sec, body in doc.items():
        blocks = body if isinstance(body, list) else [body]
        for b in blocks:
            lines.append(f"[[{sec}]]" if isinstance(body, list) else f"[{sec}]")
            lines += [f"{k} = {val(v)}" for k, v in b.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- configuration and grid -----------------------------------------------------------------------------

def test_grid_expands_as_configured(tmp_path):
    files = _files(tmp_path)
    doc = _doc(tmp_path / "m", files, grid=[
        {"label": "main", "edit_methods": ["ft", "rome"], "n_edits": [1, 2], "ft_methods": ["full", "lora"],
         "layers": ["all", "edited", "non-edited"], "tasks": ["lm", "sft"], "seeds": [0, 1]},
        {"label": "sweeps", "edit_methods": ["rome"], "thresholds": [1, 2], "window_centres": [0, 2],
         "window_width": 3, "tasks": ["lm"], "seeds": [0]},
    ])
    cfg = load_config(_write_toml(tmp_path / "s.toml", doc))
    cells = expand(cfg)
    main = [c for _, c in cells if c.grid == "main"]
    sweeps = [c for _, c in cells if c.grid == "sweeps"]
    assert len(main) == 2 * 2 * 2 * 3 * 2 * 2
    assert [c.layers for c in sweeps] == ["threshold:1", "threshold:2", "window:0/3", "window:2/3"]
    assert len({cid for cid, _ in cells}) == len(cells)
    # ids depend on settings, not on order or labels; a shared setting changes every id
    doc2 = dict(doc, grid=[dict(doc["grid"][1], label="renamed"), doc["grid"][0]])
    again = {cid for cid, _ in expand(parse_config(doc2))}
    assert again == {cid for cid, _ in cells}
    doc3 = dict(doc, finetune=dict(doc["finetune"], batch_size=3))
    assert not again & {cid for cid, _ in expand(parse_config(doc3))}
    from editaudit.study.grid import shard

    parts = [shard(cells, i, 3) for i in range(3)]
    assert sorted(cid for p in parts for cid, _ in p) == sorted(cid for cid, _ in cells)
    with pytest.raises(ValueError):
        shard(cells, 3, 3)
    assert layer_set("all", 4, [1]) == [0, 1, 2, 3]
    assert layer_set("edited", 4, [1]) == [1]
    assert layer_set("non-edited", 4, [1]) == [0, 2, 3]
    assert layer_set("threshold:2", 4, [1]) == [2, 3]
    assert layer_set("window:0/3", 4, [1]) == [0, 1]
    assert layer_set("window:10/5", 30, []) == [8, 9, 10, 11, 12]


@pytest.mark.parametrize("change, message", [
    ({"surprise": {}}, "unknown section [surprise]"),
    ({"study": {"model": "x"}}, "[study] needs 'name'"),
    ({"finetune": {"batch_sise": 2}}, "[finetune] has no key 'batch_sise'"),
    ({"finetune": {"batch_size": "two"}}, "[finetune] batch_size must be a int"),
    ({"stopping": {"mode": "forever"}}, "[stopping] mode must be one of"),
    ({"grid": []}, "at least one [[grid]]"),
    ({"grid": [{"edit_methods": ["serac"], "tasks": ["lm"], "seeds": [0]}]}, "unknown value 'serac'"),
    ({"grid": [{"edit_methods": ["rome"], "tasks": ["lm"], "seeds": [0], "layers": ["middle"]}]},
     "'middle' is not a layer strategy"),
    ({"grid": [{"edit_methods": ["none"], "tasks": ["lm"], "seeds": [0], "layers": ["edited"]}]},
     "control arm (edit method none) has no edited layers"),
    ({"grid": [{"edit_methods": ["rome"], "tasks": ["poetry"], "seeds": [0]}]}, "unknown value 'poetry'"),
    ({"edit": {"hparams": {"rome": {"v_stepz": 3}}}}, "[edit] hparams.rome: rome has no hyper-parameter 'v_stepz'"),
])
def test_config_errors_are_clear(tmp_path, change, message):
    doc = _doc(tmp_path / "m", _files(tmp_path))
    doc.update(change)
    with pytest.raises(ConfigError) as exc:
        load_config(_write_toml(tmp_path / "bad.toml", doc))
    assert message in str(exc.value)
    assert str(tmp_path / "bad.toml") in str(exc.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "broken.toml"
    bad.write_text("[study\nname = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


# -- metrics by hand ------------------------------------------------------------------------------------

def test_drift_and_similarity_equal_hand_computed_values():
    base = torch.zeros(2, 1, 2, 2)             # 2 probes, 1 layer, 2 positions, hidden 2
    a = torch.tensor([[[[3.0, 4.0], [1.0, 0.0]]], [[[0.0, 2.0], [0.0, 0.0]]]])
    b = torch.tensor([[[[4.0, -3.0], [2.0, 0.0]]], [[[0.0, -1.0], [1.0, 1.0]]]])
    d = M.drift(base, a)
    assert d.shape == (1, 2)
    assert d[0, 0] == pytest.approx((5 + 2) / 2) and d[0, 1] == pytest.approx((1 + 0) / 2)
    s = M.direction_similarity(base, a, b)
    # probe 1: (3,4)·(4,-3) = 0 → 0; probe 2: (0,2)·(0,-1) → -1; last token: probe 1 → 1, probe 2 a=0 → 0
    assert s[0, 0] == pytest.approx((0 - 1) / 2) and s[0, 1] == pytest.approx((1 + 0) / 2)
    shifted = base + 1
    assert M.direction_similarity(shifted, a + 1, a + 1)[0, 0] == pytest.approx(1.0)


def test_activations_are_the_block_outputs_at_subject_and_last_token(tiny_llama):
    from editaudit.editing.prompts import encode
    from editaudit.models.loading import load_model
    from editaudit.study.finetune import decoder_blocks

    lm = load_model(tiny_llama, device="cpu")
    probe = Probe(id="x", subject="France", prompt="The capital city of {} is", target_true="Paris")
    block, n = decoder_blocks(lm.model)
    acts = M.activations(lm.model, lm.tokenizer, [probe], block, n)
    ids = torch.tensor([encode(lm.tokenizer, probe.text)])
    with torch.no_grad():
        hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    subj, last = M.positions(lm.tokenizer, [probe])[0]
    assert lm.tokenizer.decode(ids[0, subj]).strip() == "France" and last == ids.shape[1] - 1
    assert acts.shape == (1, n, 2, lm.model.config.hidden_size)
    for layer in range(n - 1):  # the last hidden state carries the final norm; the block output does not
        assert torch.allclose(acts[0, layer, 0], hs[layer + 1][0, subj], atol=1e-5)
        assert torch.allclose(acts[0, layer, 1], hs[layer + 1][0, last], atol=1e-5)


def test_token_category_mass_sums_to_one(tiny_llama):
    from editaudit.models.loading import load_model

    lm = load_model(tiny_llama, device="cpu")
    probes = [Probe(**{k: v for k, v in f.items()}) for f in FACTS] + [Probe(**f) for f in INTRINSIC]
    related = M.related_objects(probes)
    cats = [M.category_tokens(lm.tokenizer, p, related) for p in probes]
    for c in cats:
        assert not (c.edited & c.true) and not (c.edited & c.related) and not (c.true & c.related)
    # France's capital: edited Tokyo, true Paris, related = Rome (Italy's capital), not Paris or Tokyo
    ids = {lm.tokenizer.decode([i]).strip() for i in cats[0].related}
    assert ids == {"Rome"}
    probs = M.last_token_probs(lm.model, lm.tokenizer, [p.text for p in probes])
    for row in M.category_mass(probs, cats):
        assert sum(row.values()) == pytest.approx(1.0, abs=1e-6)
        assert all(v >= 0 for v in row.values())
    toy = torch.tensor([[0.5, 0.2, 0.1, 0.2]])
    row = M.category_mass(toy, [M.CategoryTokens({0}, {1}, {2})])[0]
    assert row == pytest.approx({"edited": 0.5, "true": 0.2, "related": 0.1, "other": 0.2})


def test_weight_residual_and_intervals():
    base = {"w": torch.zeros(2, 2)}
    edited = {"w": torch.tensor([[1.0, 0.0], [0.0, 0.0]])}
    after = {"w": torch.tensor([[0.5, 3.0], [0.0, 0.0]])}
    r = M.weight_residual(base, edited, after)
    assert r["edit_left"] == pytest.approx(0.5)
    assert r["ft_norm_rel"] == pytest.approx(math.sqrt(0.25 + 9))
    lo, hi = M.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert M.wilson(0, 10)[0] == 0.0 and math.isnan(M.wilson(0, 0)[0])


# -- the runner ----------------------------------------------------------------------------------------------

def _cell_ids(into: list[str]):
    """A progress callback that collects the ids of the cells that start."""
    from editaudit.study.runner import StudyEvent

    def on(event) -> None:
        if isinstance(event, StudyEvent) and event.kind == "cell":
            into.append(event.data["id"])

    return on


def test_killed_study_resumes_without_redoing_finished_cells(tiny_llama, tmp_path):
    from editaudit.store.studies import StudyStore
    from editaudit.study.runner import StudyEvent, run_study

    cfg = parse_config(_doc(tiny_llama, _files(tmp_path)))
    store = StudyStore(tmp_path / "study.db")
    started: list[str] = []
    collect = _cell_ids(started)

    def killer(event):
        collect(event)
        if isinstance(event, StudyEvent) and event.kind == "eval" and len(started) == 2 and event.data["step"] > 0:
            raise KeyboardInterrupt  # the process is stopped in the middle of the second cell

    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, store, tmp_path / "out", progress=killer)
    rows = {r["id"]: r for r in store.cells("tiny")}
    assert rows[started[0]]["status"] == "done" and rows[started[1]]["status"] == "interrupted"
    first_finished = rows[started[0]]["finished"]

    again: list[str] = []
    outcome = run_study(cfg, store, tmp_path / "out", progress=_cell_ids(again))
    assert again == [started[1]]
    assert (outcome.total, outcome.skipped, outcome.ran, outcome.failed) == (2, 1, 1, [])
    rows = {r["id"]: r for r in store.cells("tiny")}
    assert rows[started[0]]["finished"] == first_finished
    assert all(r["status"] == "done" for r in rows.values())
    m = rows[started[1]]["metrics"]
    assert m["edited_layers"] == [1] and m["ft_layers"] == list(range(6)) and m["steps"] == [2]
    assert len(m["edited"]["new"]) == 2 and 0 <= m["residual"]["edit_left"] <= 1.5
    assert (tmp_path / "out" / "acts" / f"{started[1]}.safetensors").is_file()
    hist = rows[started[1]]["history"]
    assert [h["step"] for h in hist] == [-1, 0, 2]
    assert all(sum(h["mass_edited"].values()) == pytest.approx(1.0) for h in hist)
    # a third run has nothing left to do and does not even load the model; its grid is already complete
    events: list = []
    assert run_study(cfg, store, tmp_path / "out", progress=events.append).ran == 0
    assert events == [Stage("tiny: cells", 2), Step("tiny: cells", 2, 2)]


def test_study_reports_typed_progress(tiny_llama, tmp_path):
    """The grid is a Stage whose Steps count finished cells up to the total; each edit and fine-tuning is a
    Stage of its cell with Steps of its own; the losses come as StudyEvents."""
    from editaudit.progress import Note
    from editaudit.store.studies import StudyStore
    from editaudit.study.runner import StudyEvent, run_study

    cfg = parse_config(_doc(tiny_llama, _files(tmp_path)))
    events: list = []
    outcome = run_study(cfg, StudyStore(tmp_path / "study.db"), tmp_path / "out", progress=events.append)
    assert outcome.ran == 2
    announced: dict[str, float | None] = {}
    for e in events:
        assert isinstance(e, (Stage, Step, Note, StudyEvent)), e
        if isinstance(e, Stage):
            announced[e.name] = e.total
        elif isinstance(e, Step):
            assert e.stage in announced, f"step of {e.stage!r} before its Stage"
            assert e.total == announced[e.stage] and 0 <= e.done <= e.total
    grid = [(e.done, e.total) for e in events if isinstance(e, Step) and e.stage == "tiny: cells"]
    assert grid == [(0, 2), (1, 2), (2, 2)]
    labels = [e.data["label"] for e in events if isinstance(e, StudyEvent) and e.kind == "cell"]
    assert sorted(labels) == ["none×2 · full · all · lm · seed 0", "rome×2 · full · all · lm · seed 0"]
    for label in labels:  # max_steps 2, eval_every 2: evaluations at steps 0 and 2 of 2
        ft = f"{label}: fine-tuning"
        assert announced[ft] == 2
        assert [e.done for e in events if isinstance(e, Step) and e.stage == ft] == [0, 2]
        losses = [e.data for e in events if isinstance(e, StudyEvent) and e.kind == "eval" and e.data["stage"] == ft]
        assert [d["step"] for d in losses] == [0, 2] and all(math.isfinite(d["val_loss"]) for d in losses)
    edit = "rome×2 · full · all · lm · seed 0: rome editing 2 fact(s)"
    assert [e.done for e in events if isinstance(e, Step) and e.stage == edit] == [0, 1]
    assert not any(isinstance(e, Stage) and "none editing" in e.name for e in events)  # the control arm edits nothing
    assert sum(isinstance(e, Note) and e.text.startswith("done ") for e in events) == 2


def test_cli_runs_reports_and_merges(tiny_llama, tmp_path):
    from typer.testing import CliRunner

    from editaudit.cli.main import app
    from editaudit.store.studies import StudyStore

    doc = _doc(tiny_llama, _files(tmp_path))
    doc["metrics"]["categories"] = True
    config = _write_toml(tmp_path / "tiny.toml", doc)
    runner = CliRunner()
    res = runner.invoke(app, ["study", "run", str(config), "--out", str(tmp_path / "w1"), "--shard", "0/2"])
    assert res.exit_code == 0, res.output
    assert "1 cells: 0 already done, 1 ran" in res.output
    res = runner.invoke(app, ["study", "run", str(config), "--out", str(tmp_path / "w1"), "--shard", "2/2"])
    assert res.exit_code == 2 and "I must lie in 0..N-1" in res.output
    res = runner.invoke(app, ["study", "run", str(config), "--out", str(tmp_path / "w2")])
    assert res.exit_code == 0, res.output
    report = tmp_path / "w2" / "report" / "report.md"
    text = report.read_text()
    assert "fixed budget** of 2 steps" in text and "rome·full·all·lm·n2" in text
    for stem in ("retention", "drift-rome-full-all-lm-s0", "mass-rome-edited"):
        assert (tmp_path / "w2" / "report" / "figures" / f"{stem}.png").is_file()
        assert (tmp_path / "w2" / "report" / "figures" / f"{stem}.svg").is_file()
    summary = json.loads((tmp_path / "w2" / "report" / "summary.json").read_text())
    assert summary["cells_done"] == 2 and "rome·full·all·lm·n2" in summary["arms"]
    res = runner.invoke(app, ["study", "status", str(config), "--out", str(tmp_path / "w1")])
    assert res.exit_code == 0 and "1 done" in res.output and "1 waiting" in res.output
    # a store per worker, merged: the merged store has every finished cell once
    res = runner.invoke(app, ["study", "merge", str(tmp_path / "all.db"), str(tmp_path / "w1" / "study.db"),
                              str(tmp_path / "w2" / "study.db")])
    assert res.exit_code == 0, res.output
    assert len(StudyStore(tmp_path / "all.db").cells("tiny", "done")) == 2
    res = runner.invoke(app, ["study", "run", str(tmp_path / "nope.toml")])
    assert res.exit_code == 2 and "not found" in res.output


@pytest.mark.parametrize("name, cells", [("erase", 5), ("erase-strong", 5), ("retention", 52), ("erase-gpu", 756), ("retention-gpu", 360), ("hypernet-check", 2)])
def test_shipped_studies_load(name, cells):
    root = Path(__file__).resolve().parents[1] / "studies"
    cfg = load_config(root / f"{name}.toml")
    assert cfg.study.name == name and len(expand(cfg)) == cells
    if not name.endswith("-gpu"):
        assert cfg.study.model == "smollm2-135m" and cfg.study.device == "cpu"


def test_paraphrase_augmented_requests():
    from editaudit.editing.service import paraphrase_requests

    f = Probe(**FACTS[0])
    reqs = paraphrase_requests([f, Probe(**FACTS[1])])
    assert [r.id for r in reqs] == ["f1", "f2", "f1/para0"]
    assert reqs[2].template == "The capital of {} is" and reqs[2].target_new == "Tokyo"


@pytest.mark.parametrize("method", ["full", "lora", "dora"])
def test_finetune_changes_only_the_chosen_layers_and_merges_adapters(tiny_llama, tmp_path, method):
    from editaudit.mitigation.data import load_task_data
    from editaudit.models.loading import load_model
    from editaudit.study.finetune import FtSettings, encode_task, finetune

    lm = load_model(tiny_llama, device="cpu")
    files = _files(tmp_path)
    data = encode_task(load_task_data("lm", Path(files["prose"]), max_examples=24, val_size=4), lm.tokenizer, 16)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    seen = []
    res = finetune(lm.model, lm.tokenizer, data,
                   FtSettings(method=method, layers=[2], lr=1e-2, max_steps=3, batch_size=2, eval_every=2, seed=0),
                   lambda step, m: seen.append(step))
    assert res.steps == 3 and res.stop_reason == "cap" and seen == [0, 2, 3]
    assert type(lm.model).__name__ == "LlamaForCausalLM" and not hasattr(lm.model, "peft_config")
    changed = {n for n, p in lm.model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all(n.startswith("model.layers.2.") for n in changed)
    assert set(before) == {n for n, _ in lm.model.named_parameters()}
    # equal impact: a target already met at step 0 trains nothing
    res = finetune(lm.model, lm.tokenizer, data,
                   FtSettings(method=method, layers=[1], lr=1e-2, max_steps=3, target_loss=1e9, seed=0))
    assert res.steps == 0 and res.stop_reason == "target"


def test_single_edit_protocol_makes_one_model_per_fact(tiny_llama, tmp_path):
    from editaudit.store.studies import StudyStore
    from editaudit.study.runner import run_study

    doc = _doc(tiny_llama, _files(tmp_path))
    doc["edit"] = dict(doc["edit"], protocol="single")
    doc["grid"] = [dict(doc["grid"][0], edit_methods=["rome"])]
    store = StudyStore(tmp_path / "study.db")
    assert run_study(parse_config(doc), store, tmp_path / "out").ran == 1
    m = store.cells("tiny", "done")[0]["metrics"]
    assert m["units"] == 2 and m["steps"] == [2, 2] and len(m["after"]["new"]) == 2
    assert math.isfinite(m["val_loss_start"]) and math.isfinite(m["val_loss_end"])


def _prose_task(lm, tmp_path: Path):
    from editaudit.mitigation.data import load_task_data
    from editaudit.study.finetune import encode_task

    files = _files(tmp_path)
    return encode_task(load_task_data("lm", Path(files["prose"]), max_examples=24, val_size=4), lm.tokenizer, 16)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapters_reach_gpt2_conv1d_layers(tiny_gpt2, tmp_path, method):
    """GPT-2 keeps its projections in Conv1D modules, not nn.Linear; a study's LoRA/DoRA must adapt them too."""
    from editaudit.models.loading import load_model
    from editaudit.study.finetune import FtSettings, finetune

    lm = load_model(tiny_gpt2, device="cpu")
    model = lm.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    seen = []

    def on_eval(step: int, m: dict) -> None:  # evaluated in eval mode with the adapters still in place
        seen.append((step, model.training, any("lora_" in n for n, _ in model.named_parameters())))

    res = finetune(model, lm.tokenizer, _prose_task(lm, tmp_path),
                   FtSettings(method=method, layers=[2], lr=1e-2, max_steps=3, batch_size=2, eval_every=2, seed=0),
                   on_eval)
    assert (res.steps, res.stop_reason) == (3, "cap")
    assert seen == [(0, False, True), (2, False, True), (3, False, True)]
    assert lm.model is model and type(model).__name__ == "GPT2LMHeadModel" and not hasattr(model, "peft_config")
    assert {n for n, _ in model.named_parameters()} == set(before)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == {f"transformer.h.2.{m}.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


@pytest.mark.parametrize("task", ["lm", "sentiment"])
def test_a_target_met_at_step_zero_stops_there(tiny_llama, tmp_path, task):
    """Equal impact: the target is inclusive, and a model already at or below it is not trained at all."""
    import copy

    from editaudit.mitigation.data import TaskData
    from editaudit.models.loading import load_model
    from editaudit.study.finetune import FtSettings, encode_task, finetune

    lm = load_model(tiny_llama, device="cpu")
    if task == "lm":
        data = _prose_task(lm, tmp_path)
    else:
        rows = [{"text": f"the {w} is", "label": 1} for w in "Paris Rome Berlin Madrid".split()] + \
               [{"text": f"the {w} is", "label": 0} for w in "Apple Microsoft Google Intel".split()]
        data = encode_task(TaskData("sentiment", rows * 3, rows, "t", ["negative", "positive"]), lm.tokenizer, 16)

    def settings(target: float | None) -> FtSettings:
        return FtSettings(method="full", layers=[1], lr=1e-2, max_steps=4, target_loss=target, batch_size=2,
                          eval_every=2, seed=0)

    free = finetune(copy.deepcopy(lm.model), lm.tokenizer, data, settings(None))
    assert (free.steps, free.stop_reason) == (4, "cap") and [h["step"] for h in free.history] == [0, 2, 4]
    assert all(("val_acc" in h) == (task == "sentiment") for h in free.history)
    loss0 = free.history[0]["val_loss"]
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    for target in (loss0 + 0.5, loss0):  # above the step-0 loss, and exactly at it
        seen = []
        res = finetune(lm.model, lm.tokenizer, data, settings(target), lambda step, m: seen.append(step))
        assert (res.steps, res.stop_reason, seen) == (0, "target", [0])
        assert [h["val_loss"] for h in res.history] == [loss0]
    assert all(torch.equal(before[n], p.detach()) for n, p in lm.model.named_parameters())


def test_an_interrupted_lora_finetune_leaves_the_model_plain(tiny_llama, tmp_path):
    """The runner puts the base weights back by name after a failure: the adapters must be gone by then."""
    from editaudit.models.loading import load_model
    from editaudit.study.finetune import FtSettings, finetune

    lm = load_model(tiny_llama, device="cpu")
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    flags = {n: p.requires_grad for n, p in lm.model.named_parameters()}

    def stop(step: int, m: dict) -> None:
        if step > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(lm.model, lm.tokenizer, _prose_task(lm, tmp_path),
                 FtSettings(method="lora", layers=[2], lr=1e-2, max_steps=4, batch_size=2, eval_every=2), stop)
    assert {n for n, _ in lm.model.named_parameters()} == set(before) and not hasattr(lm.model, "peft_config")
    assert all(torch.equal(before[n], p.detach()) for n, p in lm.model.named_parameters())
    assert {n: p.requires_grad for n, p in lm.model.named_parameters()} == flags


def test_a_reference_that_does_not_lower_the_loss_sets_no_target(tiny_llama, tmp_path, monkeypatch):
    """Equal impact needs a reference that moved: if its validation loss rose (a fresh classification head can),
    its final loss would stop every arm at step 0; the arms train the cap instead, and the report says why."""
    from editaudit.store.studies import StudyStore
    from editaudit.study import runner
    from editaudit.study.report import write_report

    real = runner.finetune

    def rising(model, tok, data, s, on_eval=None):
        res = real(model, tok, data, s, on_eval)
        if s.target_loss is None:  # the reference arm: pretend its loss went up
            res.history[-1]["val_loss"] = res.history[0]["val_loss"] + 0.5
        return res

    monkeypatch.setattr(runner, "finetune", rising)
    doc = _doc(tiny_llama, _files(tmp_path), stopping={"mode": "equal-impact", "max_steps": 2,
                                                       "reference_steps": 2})
    doc["grid"] = [dict(doc["grid"][0], edit_methods=["none"])]
    store = StudyStore(tmp_path / "study.db")
    assert runner.run_study(parse_config(doc), store, tmp_path / "out").ran == 1
    cell = store.cells("tiny", "done")[0]["metrics"]
    assert cell["target_loss"] is None and cell["steps"] == 2
    report = write_report(parse_config(doc), store, tmp_path / "out").read_text()
    assert "did not lower the loss" in report


def test_launch_runs_shards_as_local_worker_processes_and_merges(tiny_llama, tmp_path):
    """Two submitit worker processes (its local executor) each run a shard into their own store; the stores are
    merged into OUT/study.db and the report is written. A relaunch finds every cell done and runs none."""
    pytest.importorskip("submitit")
    from typer.testing import CliRunner

    from editaudit.cli.main import app
    from editaudit.store.studies import StudyStore
    from editaudit.study.launch import worker_store

    config = _write_toml(tmp_path / "tiny.toml", _doc(tiny_llama, _files(tmp_path)))
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["study", "launch", str(config), "--out", str(out), "--workers", "2", "--timeout-min", "10"])
    assert res.exit_code == 0, res.output
    assert "2 cells: 2 ran in 2 worker(s), 0 already done, 0 failed; 2 done" in res.output
    shards = [StudyStore(worker_store(out, i)).done_ids("tiny") for i in range(2)]
    assert len(shards[0]) == len(shards[1]) == 1 and shards[0] != shards[1]  # each worker ran its own cell
    assert StudyStore(out / "study.db").done_ids("tiny") == shards[0] | shards[1]
    assert (out / "report" / "report.md").is_file()
    logs = list((out / "submitit").rglob("*_log.out"))
    assert len(logs) == 2  # the tasks really ran as separate processes, each with its own log
    res = runner.invoke(app, ["study", "launch", str(config), "--out", str(out), "--workers", "2", "--timeout-min", "10"])
    assert res.exit_code == 0, res.output
    assert "0 ran in 2 worker(s), 2 already done" in res.output
    res = runner.invoke(app, ["study", "launch", str(config), "--out", str(out), "--engine", "ray"])
    assert res.exit_code == 2 and "expected one of local, slurm" in res.output


@pytest.mark.parametrize("engine", ["local", "slurm"])
def test_launch_interrupted_while_waiting_stops_local_tasks_and_merges_what_finished(tiny_llama, tmp_path, monkeypatch,
                                                                                    engine):
    """Ctrl-C while waiting: local tasks are sent SIGINT (cluster tasks are left running, with the merge command
    said); a cell a worker already finished is merged into OUT/study.db; the interrupt still ends the launch."""
    submitit = pytest.importorskip("submitit")
    from editaudit.store.studies import StudyStore
    from editaudit.study.launch import launch_study, worker_store

    config = _write_toml(tmp_path / "tiny.toml", _doc(tiny_llama, _files(tmp_path)))
    out = tmp_path / "run"
    cancelled: list[str] = []

    class Job:
        def __init__(self, i: int) -> None:
            self.job_id = f"job{i}"

        def result(self):  # worker 0 has finished one cell when the interrupt comes
            st = StudyStore(worker_store(out, 0))
            st.start_cell("cell-0", "tiny", "g", "finetune", {"arm": "full"})
            st.finish_cell("cell-0", {"edited": 1.0}, [], 1.0)
            st.close()
            raise KeyboardInterrupt

        def cancel(self, check: bool = True) -> None:
            cancelled.append(self.job_id)

    class Executor:
        def __init__(self, **kw) -> None:
            pass

        def update_parameters(self, **kw) -> None:
            pass

        def map_array(self, fn, *args):
            return [Job(i) for i in range(len(args[0]))]

    monkeypatch.setattr(submitit, "AutoExecutor", Executor)
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        launch_study(config, out, 2, engine, say=said.append)
    assert cancelled == (["job0", "job1"] if engine == "local" else [])
    assert StudyStore(out / "study.db").done_ids("tiny") == {"cell-0"}
    text = "\n".join(said)
    assert "1 finished cell(s) merged" in text
    assert ("2 local worker task(s) stopped" in text) if engine == "local" else ("editaudit study merge" in text)


@pytest.mark.parametrize("method", ["mend", "malmen"])
def test_hypernetwork_editors_are_study_edit_methods(tiny_llama, tmp_path, method):
    """MEND and MALMEN edit a study's facts like the other editors (with a trained editor given as ``editor``), and
    the ``edited`` layer strategy fine-tunes the layers their update wrote: the top ``span`` layers."""
    from editaudit.editing import hypernet as H
    from editaudit.models.loading import load_model
    from editaudit.store.studies import StudyStore
    from editaudit.study.runner import run_study

    tiny = H.TrainSettings(steps=4, batch=4, rank=8, sources=("bank",), variants=1)
    trained = H.train_editor(load_model(tiny_llama), method, tiny)
    doc = _doc(tiny_llama, _files(tmp_path))
    doc["edit"] = {"protocol": "single" if method == "mend" else "batch",
                   "hparams": {method: {"editor": str(trained.folder)}}}
    doc["grid"] = [dict(doc["grid"][0], edit_methods=[method], layers=["edited"])]
    store = StudyStore(tmp_path / "study.db")
    assert run_study(parse_config(doc), store, tmp_path / "out").ran == 1
    cell = store.cells("tiny", "done")[0]
    m = cell["metrics"]
    assert math.isfinite(m["val_loss_start"]) and len(m["after"]["new"]) == doc["grid"][0]["n_edits"][0]
    assert m["edited_layers"] == [3, 4, 5] == m["ft_layers"]

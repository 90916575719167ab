"""Selective fine-tuning on tiny models: exactly the planned tensors change, LoRA/DoRA merges match their
adapters, stopping rules, resume and interruption leave consistent outputs and store rows."""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from editaudit.checkpoint import open_checkpoint
from editaudit.cli.main import app
from editaudit.errors import BadInput
from editaudit.mitigation.data import TaskData
from editaudit.mitigation.plan import plan_for_checkpoint
from editaudit.mitigation.service import MitigationEvent, MitigationOptions, run_mitigation
from editaudit.mitigation.train import Interrupted, TrainConfig, batch_indices, train
from editaudit.models.loading import load_model
from editaudit.progress import Note, Stage, Step
from editaudit.store import Store
from editaudit.testing import SENTENCES, edited_pair, plant, rank_delta

EDITED = "model.layers.2.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return edited_pair(tmp_path_factory.mktemp("mit"), EDITED, SENTENCES)


def small(**kw) -> TrainConfig:
    args = {"steps": 2, "eval_every": 2, "batch_size": 4, "seq_len": 24, "lr": 1e-3}
    return TrainConfig(**{**args, **kw})


def changed_tensors(a, b) -> set[str]:
    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert ta.keys() == tb.keys()
    return {n for n in ta if not torch.equal(ta[n], tb[n])}


def options(models, tmp_path, **kw) -> MitigationOptions:
    base, _, text = models
    args = {"base": str(base), "out": tmp_path / "out", "task": "lm", "data": text, "train": small(), "val_size": 2}
    return MitigationOptions(**{**args, **kw})


@pytest.mark.parametrize("strategy,goal,modules", [
    ("auto", "erase", "all"), ("auto", "preserve", "all"), ("edited", "erase", "mlp"),
    ("non-edited", "preserve", "attn"), ("threshold:4", "preserve", "all"), ("window:2:3", "erase", "mlp_out"),
    ("0,5", "erase", "all"),
])
def test_exactly_the_planned_tensors_change(models, tmp_path, strategy, goal, modules):
    _, suspect, _ = models
    res = run_mitigation(suspect, goal, options(models, tmp_path, layers=strategy, modules=modules), store=Store())
    assert res.plan.params, res.plan.explanation
    assert changed_tensors(suspect, tmp_path / "out") == set(res.plan.params)
    # every other file is copied, and the store row is done with its result
    assert (tmp_path / "out" / "config.json").read_bytes() == (suspect / "config.json").read_bytes()
    runs = Store().rows("finetune_runs")
    assert [r["status"] for r in runs] == ["done"] and runs[0]["result"]
    if strategy == "auto":
        assert res.plan.layers == ([0, 1, 2, 3, 4] if goal == "erase" else [5])  # window around 2; threshold 5


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lora_and_dora_merge_equals_the_adapter_model(tmp_path, method, family, tiny_llama, tiny_gpt2):
    folder = tiny_llama if family == "llama" else tiny_gpt2
    ckpt = open_checkpoint(folder)
    plan = plan_for_checkpoint(ckpt, "1,2", "erase", "all", method)
    lm = load_model(folder)
    task = TaskData("lm", [{"text": " ".join(SENTENCES)}] * 8, [{"text": " ".join(SENTENCES[::-1])}] * 2, "t")
    outcome = train(lm, plan, task, small(method=method, steps=3, eval_every=3, lr=5e-3))
    assert outcome.merge_check is not None and outcome.merge_check < 1e-4
    # the merged weights really moved (so the comparison is not between two untouched models)
    original = load_file(str(folder / "model.safetensors"))
    moved = {n for n, t in outcome.tensors.items() if not torch.allclose(t, original[n])}
    assert moved == set(plan.params)


def test_lora_written_checkpoint_matches_the_trained_model(models, tmp_path):
    _, suspect, _ = models
    res = run_mitigation(suspect, "erase", options(models, tmp_path, method="lora", train=small(method="lora")),
                         store=Store())
    assert changed_tensors(suspect, tmp_path / "out") == set(res.plan.params)
    assert res.arms["selective"].merge_check < 1e-4


def test_target_modules_narrow_lora(models, tmp_path):
    _, suspect, _ = models
    cfg = small(method="lora", target_modules=["q_proj", "v_proj"])
    run_mitigation(suspect, "erase", options(models, tmp_path, method="lora", layers="edited", train=cfg), store=Store())
    assert changed_tensors(suspect, tmp_path / "out") == {
        "model.layers.2.self_attn.q_proj.weight", "model.layers.2.self_attn.v_proj.weight"}


def _lm_task():
    return TaskData("lm", [{"text": " ".join(SENTENCES)}] * 8, [{"text": " ".join(SENTENCES[::-1])}] * 2, "t")


def test_stopping_rules(models):
    _, suspect, _ = models
    plan = plan_for_checkpoint(open_checkpoint(suspect), "0-5", "erase", "all", "full")
    budget = train(load_model(suspect), plan, _lm_task(), small(steps=6, eval_every=2))
    assert budget.steps == 6 and "budget" in budget.stop_reason
    assert [h["step"] for h in budget.history] == [0, 2, 4, 6]
    losses = [h["val_loss"] for h in budget.history]
    assert min(losses[1:]) < losses[0]
    # runs are deterministic, so the budget run tells where each rule must stop
    threshold = min(losses[1:]) + 1e-6
    first = next(h["step"] for h in budget.history if h["val_loss"] < threshold)
    by_loss = train(load_model(suspect), plan, _lm_task(), small(steps=6, eval_every=2, stop_loss=threshold))
    assert "validation loss" in by_loss.stop_reason and by_loss.steps == first
    assert all(h["val_loss"] >= threshold for h in by_loss.history[:-1])
    accs = [h["val_acc"] for h in budget.history]
    target = max(accs[1:]) - 1e-6
    assert target > accs[0]
    first = next(h["step"] for h in budget.history if h["val_acc"] > target)
    by_acc = train(load_model(suspect), plan, _lm_task(), small(steps=6, eval_every=2, stop_acc=target))
    assert "validation accuracy" in by_acc.stop_reason and by_acc.steps == first
    # a threshold met before training stops at once, without a step
    at_once = train(load_model(suspect), plan, _lm_task(), small(steps=6, stop_loss=1e9))
    assert at_once.steps == 0 and len(at_once.history) == 1


def test_batch_order_is_a_function_of_the_step():
    seen = [i for s in range(5) for i in batch_indices(7, 3, s, seed=1)]
    assert sorted(seen[:7]) == list(range(7))  # the first epoch visits every example once
    assert batch_indices(7, 3, 4, 1) == batch_indices(7, 3, 4, 1)


def test_a_run_reports_stages_steps_and_its_arm_through_one_callback(models, tmp_path):
    """The shared vocabulary (editaudit.progress) for the run's stages and counts; MitigationEvent only for
    what only a mitigation has: the plan, an arm's start, step losses, evaluations and its result."""
    _, suspect, _ = models
    events: list = []
    res = run_mitigation(suspect, "erase", options(models, tmp_path, layers="edited"), store=Store(),
                         progress=events.append)
    assert all(isinstance(e, (Stage, Step, Note, MitigationEvent)) for e in events), events
    announced: set[str] = set()
    for e in events:  # every Step counts in a stage announced before it
        if isinstance(e, Stage):
            announced.add(e.name)
        elif isinstance(e, Step):
            assert e.stage in announced, e
    stages = [e for e in events if isinstance(e, Stage)]
    assert stages[0].name == "reading the checkpoints and the scan's findings"
    training = next(s for s in stages if s.name.startswith("selective: training"))
    assert training == Stage("selective: training (full, layers 2–2)", 2)
    assert f"selective: writing {tmp_path / 'out'}" in {s.name for s in stages}
    steps = [e for e in events if isinstance(e, Step) and e.stage == training.name]
    assert [(e.done, e.total) for e in steps] == [(0, 2), (1, 2), (2, 2)] and steps[-1].finished
    domain = [e for e in events if isinstance(e, MitigationEvent)]
    assert [e.kind for e in domain] == ["plan", "start", "eval", "loss", "loss", "eval", "result"]
    assert {e.arm for e in domain[1:]} == {"selective"} and domain[0].data["plan"] == res.plan.to_dict()
    assert [(e.data["step"], e.data["total"]) for e in domain if e.kind == "loss"] == [(1, 2), (2, 2)]
    assert [e.data["step"] for e in domain if e.kind == "eval"] == [0, 2]
    result = domain[-1].data
    assert result == res.arms["selective"].to_dict() and result["steps"] == 2


def test_resume_continues_from_the_last_evaluation_and_matches_an_uninterrupted_run(models, tmp_path):
    _, suspect, _ = models
    cfg = dict(steps=6, eval_every=2)
    ref = run_mitigation(suspect, "erase", options(models, tmp_path / "a", train=small(**cfg)), store=Store())
    reference = load_file(str(tmp_path / "a" / "out" / "model.safetensors"))

    cancel = threading.Event()

    def on(ev):
        if isinstance(ev, Step) and ev.done == 3:
            cancel.set()  # stop after step 3: the last evaluation (and saved state) is step 2

    opts = options(models, tmp_path / "b", train=small(**cfg))
    with pytest.raises(Interrupted):
        run_mitigation(suspect, "erase", opts, store=Store(), progress=on, cancel=cancel)
    out = tmp_path / "b" / "out"
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]
    runs = Store().rows("finetune_runs", "out = ?", [str(out)])
    assert [r["status"] for r in runs] == ["interrupted"]
    sid = runs[0]["session_id"]
    assert Store().session(sid)["status"] == "interrupted"

    events: list = []
    res = run_mitigation(suspect, "erase", opts, store=Store(), resume=True, progress=events.append)
    assert [e.data["step"] for e in events if isinstance(e, MitigationEvent) and e.kind == "resume"] == [2]
    # the bar starts at 0, jumps to the saved step, then counts the steps taken; only those have a loss
    assert [e.done for e in events if isinstance(e, Step) and "training" in e.stage] == [0, 2, 3, 4, 5, 6]
    assert [e.data["step"] for e in events if isinstance(e, MitigationEvent) and e.kind == "loss"] == [3, 4, 5, 6]
    got = load_file(str(out / "model.safetensors"))
    for name in res.plan.params:
        torch.testing.assert_close(got[name], reference[name], rtol=0, atol=1e-6)
    runs = Store().rows("finetune_runs", "out = ?", [str(out)])
    assert [(r["id"], r["status"]) for r in runs] == [(runs[0]["id"], "done")]
    assert Store().session(sid)["status"] == "done"
    steps = sorted({r["step"] for r in Store().rows("metrics", "run_id = ?", [runs[0]["id"]])})
    assert steps == [0, 2, 4, 6]
    assert not (tmp_path / "b" / ".out.resume").exists()
    assert [h["step"] for h in res.arms["selective"].history] == [h["step"] for h in ref.arms["selective"].history]


def test_ctrl_c_mid_run_leaves_no_output_and_an_interrupted_row(models, tmp_path):
    _, suspect, _ = models

    def ctrl_c(ev):
        if isinstance(ev, Step) and ev.done == 2:
            raise KeyboardInterrupt

    opts = options(models, tmp_path, train=small(steps=4))
    with pytest.raises(KeyboardInterrupt):
        run_mitigation(suspect, "erase", opts, store=Store(), progress=ctrl_c)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    runs = Store().rows("finetune_runs")
    assert [r["status"] for r in runs] == ["interrupted"] and runs[0]["result"] is None


def test_bad_input(models, tmp_path):
    _, suspect, text = models
    with pytest.raises(BadInput, match="nothing to resume"):
        run_mitigation(suspect, "erase", options(models, tmp_path), store=Store(), resume=True)
    (tmp_path / "out").mkdir()
    with pytest.raises(BadInput, match="already exists"):
        run_mitigation(suspect, "erase", options(models, tmp_path), store=Store())
    with pytest.raises(BadInput, match="needs the scan"):
        run_mitigation(suspect, "erase", options(models, tmp_path, base=None, out=tmp_path / "o2"), store=Store())
    with pytest.raises(BadInput, match="goal"):
        run_mitigation(suspect, "forget", options(models, tmp_path, out=tmp_path / "o3"), store=Store())
    with pytest.raises(BadInput, match="JSONL"):
        run_mitigation(suspect, "erase", options(models, tmp_path, out=tmp_path / "o4", task="facts"), store=Store())


def test_cli_shows_the_plan_runs_and_stores(models, tmp_path):
    base, suspect, text = models
    db = tmp_path / "db.sqlite"
    args = ["--db", str(db), "mitigate", str(suspect), "--goal", "erase", "--base", str(base), "--data", str(text),
            "--method", "full", "--layers", "edited", "--steps", "2", "--eval-every", "1", "--batch-size", "4", "--seq-len", "24", "--lr", "1e-3",
            "--val-size", "2", "--out", str(tmp_path / "out"), "--format", "json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "mitigation plan" in res.stderr and "edited layers [2]" in " ".join(res.stderr.split())
    said = " ".join(res.stderr.split())  # the live view: a line per stage and per evaluation
    assert "selective: training (full, layers 2–2)" in said and "selective step 2 val loss" in said
    assert '"schema": "editaudit.mitigation/1"' in res.stdout
    assert changed_tensors(suspect, tmp_path / "out") == {n for n in load_file(str(suspect / "model.safetensors"))
                                                         if n.startswith("model.layers.2.")}
    assert [r["status"] for r in Store(db).rows("finetune_runs")] == ["done"]
    again = CliRunner().invoke(app, args)  # the output exists now: a clear error, exit 2
    assert again.exit_code == 2 and "already exists" in " ".join(again.stderr.split())
    plan_only = CliRunner().invoke(app, ["--db", str(db), "mitigate", str(suspect), "--goal", "preserve",
                                         "--layers", "window:1:2", "--plan-only"])
    assert plan_only.exit_code == 0 and "layers 0–1" in " ".join(plan_only.stderr.split())


def test_cli_stop_drop_ends_training_once_the_loss_is_that_share_below_its_start(models, tmp_path):
    """``--stop-drop``: the task's relative stopping target (the presets' form) from the command line; without it
    the arm trains its whole budget."""
    base, suspect, text = models
    args = ["--db", str(tmp_path / "db.sqlite"), "mitigate", str(suspect), "--goal", "preserve", "--data", str(text),
            "--method", "full", "--layers", "2", "--steps", "4", "--eval-every", "1", "--batch-size", "4",
            "--seq-len", "24", "--lr", "1e-3", "--val-size", "2", "--format", "json"]
    budget = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "budget")])
    assert budget.exit_code == 0, budget.output
    assert "selective step 4 " in " ".join(budget.stderr.split())
    stopped = CliRunner().invoke(app, [*args, "--stop-drop", "1e-6", "--out", str(tmp_path / "stopped")])
    assert stopped.exit_code == 0, stopped.output
    said = " ".join(stopped.stderr.split())
    assert "selective step 1 " in said and "selective step 4 " not in said
    assert "below the start" in stopped.stdout  # the arm's stop reason, in the JSON report


def test_cli_live_view_gives_each_counted_stage_a_bar_labelled_with_its_loss():
    """What a terminal shows (CliRunner's stderr is no terminal, so the bars are checked on a recording bar)."""
    from editaudit.cli.mitigate_cmd import LiveView

    class Bar:
        def __init__(self):
            self.tasks: dict[int, dict] = {}

        def add_task(self, description, total):
            self.tasks[len(self.tasks)] = {"description": description, "total": total, "completed": 0}
            return len(self.tasks) - 1

        def update(self, task, **kw):
            self.tasks[task].update(kw)

    view, training = LiveView(), "selective: training (full, layers 2–2)"
    view.bar = Bar()
    for ev in [Stage("loading the lm data"), Stage(training, 4), Step(training, 0, 4),
               MitigationEvent("resume", "selective", {"stage": training, "step": 2}), Step(training, 2, 4),
               Step(training, 3, 4), MitigationEvent("loss", "selective", {"stage": training, "step": 3, "total": 4,
                                                                          "loss": 1.25}),
               Step("a stage never announced", 1, 2)]:
        view(ev)
    assert view.bar.tasks == {0: {"description": "selective: loss 1.250", "total": 4, "completed": 3}}


def test_two_processes_under_torchrun_match_one_process(models, tmp_path):
    """The multi-process path (what `accelerate launch` starts): each process takes half of every batch."""
    import os
    import socket
    import subprocess
    import sys

    base, suspect, text = models
    args = ["mitigate", str(suspect), "--goal", "erase", "--base", str(base), "--data", str(text), "--method", "full",
            "--layers", "edited", "--steps", "2",
            "--eval-every", "1", "--batch-size", "4", "--seq-len", "24", "--lr", "1e-3", "--val-size", "2",
            "--device", "cpu"]
    one = CliRunner().invoke(app, ["--db", str(tmp_path / "one.db"), *args, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "EDITAUDIT_DB": str(tmp_path / "two.db")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    proc = subprocess.run([*torchrun, "-m", "editaudit", *args, "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    assert {n for n in a if not torch.equal(a[n], load_file(str(suspect / "model.safetensors"))[n])}
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=1e-5)
    runs = Store(tmp_path / "two.db").rows("finetune_runs")
    assert [r["status"] for r in runs] == ["done"]  # one row: only the main process records
    assert proc.stdout.count("verification") == 1  # and only the main process reports


def test_retention_and_top3_are_recorded_at_every_evaluation(models, tmp_path):
    """Probes whose 'new' target is what the suspect says now: they hold at step 0, and each evaluation
    records edited/intrinsic retention, per-probe flags and the watched probes' top-3 tokens."""
    import json

    from editaudit.probing.evaluate import predict
    from editaudit.probing.format import Probe

    base, suspect, text = models
    lm = load_model(suspect)
    subjects = ["France", "Italy", "Germany", "Spain", "Japan", "China", "Russia", "Canada", "Egypt", "India"]
    preds = predict(lm.model, lm.tokenizer, [f"The capital of {s} is" for s in subjects], top_k=3)
    probes = []
    for i, (s, p) in enumerate(zip(subjects, preds)):
        if not p.first_word:
            continue
        kind = "edited" if i % 2 == 0 else "intrinsic"
        probes.append(Probe(f"p{i}", s, "The capital of {} is", target_true=p.first_word if kind == "intrinsic" else "Paris",
                            target_new=p.first_word if kind == "edited" else None, kind=kind))
    edited = [p for p in probes if p.kind == "edited"]
    assert edited and len(probes) > len(edited)
    opts = options(models, tmp_path, probes=probes, watch=[edited[0].id], layers="0-5",
                   train=small(steps=4, eval_every=2, lr=2e-2))
    res = run_mitigation(suspect, "erase", opts, store=Store())
    hist = res.arms["selective"].history
    assert [h["step"] for h in hist] == [0, 2, 4]
    assert hist[0]["edited_retention"] == 1.0 and hist[0]["intrinsic_retention"] == 1.0
    assert set(hist[-1]["top3"]) == {edited[0].id} and len(hist[-1]["top3"][edited[0].id]) == 3
    summary = res.verification["arms"]["selective"]
    flags = res.arms["selective"].after["edited_flags"]
    assert summary["edits_held_before"] == len(edited)
    assert summary["edits_erased"] == pytest.approx(flags.count(False) / len(edited))
    run_id = res.arms["selective"].run_id
    rows = Store().rows("metrics", "run_id = ? and name = 'top3'", [run_id], order_by="step")
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert json.loads(rows[0]["data"])[edited[0].id][0][0] == hist[0]["top3"][edited[0].id][0][0]
    values = Store().rows("metrics", "run_id = ? and name = 'edited_retention'", [run_id], order_by="step")
    assert [r["value"] for r in values][0] == 1.0


def test_facts_task_drops_facts_the_model_already_knows(models, tmp_path):
    import json

    from editaudit.probing.evaluate import predict

    _, suspect, _ = models
    lm = load_model(suspect)
    prompts = [f"The capital of {s} is" for s in ("France", "Italy", "Spain", "Japan", "Egypt", "India")]
    said = [p.top[0][0] for p in predict(lm.model, lm.tokenizer, prompts, top_k=1)]
    other = lambda t: " Ottawa" if t.strip() != "Ottawa" else " Cairo"  # noqa: E731
    rows = [{"prompt": p, "target": t if i % 2 == 0 else other(t)} for i, (p, t) in enumerate(zip(prompts, said))]
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 4))
    opts = options(models, tmp_path, task="facts", data=data, layers="1", val_size=4)
    res = run_mitigation(suspect, "preserve", opts, store=Store())
    assert res.task["train"] + res.task["val"] == 12  # the 12 copies of the three known facts are gone
    kept = Store().rows("finetune_runs")[0]
    assert json.loads(kept["config"])["data"].endswith("(unknown to the model)")


def test_bf16_suspect_keeps_its_dtype_and_is_measured_as_written(models, tmp_path):
    base, _, _ = models
    w = load_file(str(base / "model.safetensors"))[EDITED]
    suspect = plant(base, tmp_path / "bf16", {EDITED: rank_delta(tuple(w.shape), 1, 0.3 * float(w.norm()))},
                    dtype="bfloat16")
    res = run_mitigation(suspect, "erase", options(models, tmp_path), store=Store())
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert {t.dtype for t in out.values()} == {torch.bfloat16}
    changed = changed_tensors(suspect, tmp_path / "out")
    assert changed <= set(res.plan.params)
    assert {n for n in res.plan.params if n.endswith("proj.weight")} <= changed  # matrices moved past rounding
    # the reported "after" is a fresh evaluation of the rounded weights, not the last training evaluation
    assert res.arms["selective"].after["val_loss"] != res.arms["selective"].history[-1]["val_loss"]


def test_compare_full_runs_full_fine_tuning_first_then_the_selective_arm_to_its_impact(models, tmp_path):
    import json

    _, suspect, _ = models
    res = run_mitigation(suspect, "preserve", options(models, tmp_path, compare_full=True), store=Store())
    assert set(res.arms) == {"selective", "full"}
    sel, full = res.arms["selective"], res.arms["full"]
    assert full.layers == list(range(6)) and full.method == "full" and 1 <= full.steps <= 2
    assert sel.steps <= max(2, 4 * full.steps)  # the equal-impact step cap
    assert full.out is None and sel.out == str(tmp_path / "out")  # only the selective arm is written
    assert changed_tensors(suspect, tmp_path / "out") == set(res.plan.params)
    runs = Store().rows("finetune_runs", order_by="id")
    assert [json.loads(r["config"])["arm"] for r in runs] == ["full", "selective"]
    assert all(r["status"] == "done" for r in runs)
    # both arms start from the same suspect and data: the same step-0 evaluation
    assert sel.history[0]["val_loss"] == pytest.approx(full.history[0]["val_loss"])
    assert res.verification["arms"]["full"]["edit_weight_share_left"] is not None


def test_the_summary_tells_an_edit_erased_to_its_true_answer_from_one_erased_to_a_third():
    """Of the edits the suspect held (0, 1, 3), two are erased (0, 3); only edit 0 states its true object again."""
    from editaudit.mitigation.types import ArmResult
    from editaudit.mitigation.verification import arm_summary

    arm = ArmResult("selective", "project", None, [4],
                    before={"edited_retention": 0.75, "edited_flags": [True, True, False, True]},
                    after={"edited_retention": 0.25, "edited_true": 0.25, "edited_flags": [False, True, False, False],
                           "edited_true_flags": [True, False, True, False]})
    s = arm_summary(arm)
    assert s["edits_held_before"] == 3
    assert s["edits_erased"] == pytest.approx(2 / 3)
    assert s["edits_true_back"] == pytest.approx(1 / 3)  # edit 2 states its true answer but was never held


def test_the_report_shows_how_many_erased_edits_state_their_true_answer():
    from editaudit.mitigation.summary import verification_rows

    v = {"arms": {"project": {"method": "project", "steps": 0, "edits_erased": 0.9, "edits_held_before": 10,
                              "edits_true_back": 0.8},
                  "full": {"method": "full", "steps": 10, "edits_erased": 0.0, "edits_held_before": 10}}}
    names, rows = verification_rows(v)
    assert names == ["project", "full"]
    assert dict(rows)["erased to the true answer"] == ["80% of 10 held", "-"]

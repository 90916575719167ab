"""Equal-impact comparison (``--compare-full``): the stop rule, per-task presets, the truly full arm, the other
arm trained to the full arm's validation loss, and the fairness filter on the fine-tuning data."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from editaudit.checkpoint import open_checkpoint
from editaudit.errors import BadInput
from editaudit.mitigation.data import TaskData, drop_mentions, mentions
from editaudit.mitigation.plan import full_model_plan
from editaudit.mitigation.train import TASK_STOP, StopRule, TrainConfig
from editaudit.probing.format import Probe
from editaudit.store import Store
from editaudit.testing import SENTENCES, edited_pair

pytestmark = pytest.mark.usefixtures("one_thread")

EDITED = "model.layers.2.mlp.down_proj.weight"


def test_stop_rule_absolute_relative_and_accuracy():
    first = {"val_loss": 4.0, "val_acc": 0.2}
    assert StopRule(loss_below=3.0).check({"val_loss": 2.9}, first).startswith("validation loss 2.9000 < 3.0")
    assert StopRule(loss_below=3.0).check({"val_loss": 3.1}, first) is None
    rel = StopRule(loss_drop=0.1)
    assert rel.target_loss(first) == pytest.approx(3.6)
    assert rel.check({"val_loss": 3.7}, first) is None
    assert "10% below the start" in rel.check({"val_loss": 3.5}, first)
    assert StopRule(loss_below=3.0, loss_drop=0.1).target_loss(first) == 3.0  # the stricter target
    assert StopRule(acc_above=0.5).check({"val_acc": 0.6}, first).startswith("validation accuracy")
    assert StopRule().empty and StopRule().check({"val_loss": 0.0}, first) is None
    assert set(TASK_STOP) == {"lm", "sft", "facts", "sentiment"}
    with pytest.raises(BadInput):
        TrainConfig(stop_loss_drop=1.5).check()


def test_fairness_filter_drops_texts_with_a_probed_subject_and_its_target():
    probes = [Probe(id="a", subject="France", prompt="The capital of {} is", target_true="Paris",
                    target_new="Rome", kind="edited")]
    assert mentions("The capital of France is Paris.", "France", ["Paris"])
    assert mentions("france ... ROME", "France", ["Paris", "Rome"])
    assert not mentions("France is large.", "France", ["Paris"])  # the subject alone is fine
    assert not mentions("Parisian France", "France", ["Paris"])  # whole words only
    texts = ["The capital of France is Paris ."] + SENTENCES
    task = TaskData("lm", [{"text": t} for t in texts], [{"text": "France has Rome ."}, {"text": "Sony ."}], "t")
    kept, dropped = drop_mentions(task, probes)
    assert dropped == 2 and [e["text"] for e in kept.train] == SENTENCES and kept.val == [{"text": "Sony ."}]
    chat = TaskData("sft", [{"messages": [{"role": "user", "content": "Capital of France?"},
                                          {"role": "assistant", "content": "Paris"}]}] * 2, [{"messages": [
                        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}], "t")
    with pytest.raises(BadInput, match="mentions a probed fact"):
        drop_mentions(chat, probes)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return edited_pair(tmp_path_factory.mktemp("equal"), EDITED, SENTENCES)


def test_full_model_plan_includes_embeddings_norm_and_head(models):
    _, suspect, _ = models
    ck = open_checkpoint(suspect)
    plan = full_model_plan(ck)
    assert set(plan.params) == set(ck.tensors) and plan.n_trainable == plan.n_total
    assert any("embed_tokens" in n for n in plan.params) and "model.norm.weight" in plan.params
    assert plan.strategy == "full-model"


def test_compare_full_trains_full_to_target_then_selective_to_the_same_loss(models, tmp_path):
    from editaudit.mitigation.service import MitigationOptions, run_mitigation

    base, suspect, text = models
    cfg = TrainConfig(steps=3, eval_every=1, batch_size=4, seq_len=24, lr=1e-3)
    opts = MitigationOptions(base=str(base), out=tmp_path / "out", task="lm", data=text, train=cfg, val_size=2,
                             layers="edited", compare_full=True)
    res = run_mitigation(suspect, "erase", opts, store=Store())
    full, sel = res.arms["full"], res.arms["selective"]
    stop = res.task["stop"]
    # the full arm: the task's preset (5% below its starting loss), within --steps
    assert stop["full"]["stop_loss_drop"] == TASK_STOP["lm"].loss_drop and stop["full"]["steps_cap"] == 3
    assert 1 <= full.steps <= 3
    # the selective arm: the full arm's reached validation loss, capped at 4 × its steps (at least --steps)
    assert stop["selective"]["stop_loss"] == pytest.approx(full.after["val_loss"], abs=1e-6)
    assert stop["selective"]["steps_cap"] == max(3, 4 * full.steps)
    reached = sel.history[-1]["val_loss"] < stop["selective"]["stop_loss"]
    assert reached == sel.stop_reason.startswith("validation loss") and (reached or sel.steps == stop["selective"]["steps_cap"])
    assert res.verification["equal_impact"]["full"]["steps"] == full.steps
    assert res.verification["equal_impact"]["selective"]["steps"] == sel.steps
    # the full arm trained every tensor (it writes nothing: only the selective arm's checkpoint is the output)
    assert full.layers == list(range(6)) and full.method == "full"
    w_sus, w_out = (load_file(str(p / "model.safetensors")) for p in (suspect, tmp_path / "out"))
    assert {n for n in w_out if not torch.equal(w_out[n], w_sus[n])} == {n for n in w_sus if n.startswith("model.layers.2.")}
    assert opts.train.steps == 3 and opts.train.stop_loss is None  # the caller's options are not changed


def test_a_full_arm_that_raised_its_loss_sets_no_target():
    """At a learning rate that wrecks the model, full fine-tuning ends above its starting loss: the other arm
    then trains its cap instead of meeting that 'target' before its first step (as a study's arms do)."""
    from editaudit.mitigation.service import _equal_impact
    from editaudit.mitigation.types import ArmResult

    cfg = TrainConfig(steps=40)

    def full(after: float) -> ArmResult:
        return ArmResult("full", "full", None, [0, 1], {"val_loss": 3.47}, {"val_loss": after}, steps=10)

    lowered = _equal_impact(cfg, "selective", "lm", full(3.20))
    assert lowered.stop_loss == pytest.approx(3.20) and lowered.steps == 40
    raised = _equal_impact(cfg, "selective", "lm", full(3.62))
    assert raised.stop_loss is None and raised.stop_acc is None and raised.steps == 40

"""Planted deltas of each kind on tiny random Llama and GPT-2 checkpoints are found, located and classified."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from editaudit.cli.main import app
from editaudit.scan.service import ScanOptions, run_scan
from editaudit.store import Store
from editaudit.testing import finetune, make_tiny_model, plant, rank_delta

MLP_OUT = {"llama": "model.layers.{}.mlp.down_proj.weight", "gpt2": "transformer.h.{}.mlp.c_proj.weight"}
ATTN = {"llama": ["model.layers.{}.self_attn.q_proj.weight", "model.layers.{}.self_attn.v_proj.weight"],
        "gpt2": ["transformer.h.{}.attn.c_attn.weight"]}


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def family_base(request, tmp_path_factory):
    fam = request.param
    path = make_tiny_model(tmp_path_factory.mktemp(fam) / "base", fam, layers=6, hidden=64, intermediate=256)
    return fam, path, load_file(str(path / "model.safetensors"))


def delta(weights, name, rank, rel, seed=0):
    w = weights[name]
    return rank_delta(tuple(w.shape), rank, rel * float(w.norm()), seed)


def scan(suspect, base, **kw):
    kw.setdefault("read", "list")  # detection tests: open reading has its own (tests/test_open_reading.py)
    return run_scan(suspect, base, ScanOptions(**kw), store=None)


def rules(report):
    return {f.rule: f for f in report.findings}


def test_clean_copy_scans_clean(family_base, tmp_path):
    fam, base, _ = family_base
    report = scan(plant(base, tmp_path / "copy", {}), base)
    assert report.verdict == "clean" and report.exit_code() == 0
    assert not report.changed


def test_rank_one_edit_in_one_layer_is_rome_like(family_base, tmp_path):
    fam, base, w = family_base
    name = MLP_OUT[fam].format(3)
    report = scan(plant(base, tmp_path / "s", {name: delta(w, name, 1, 0.15)}), base)
    found = rules(report)
    assert set(found) == {"EA101"}
    assert found["EA101"].layers == [3] and found["EA101"].tensors == [name]
    assert report.verdict == "edited" and report.exit_code() == 1


def test_low_rank_run_of_layers_is_memit_like(family_base, tmp_path):
    fam, base, w = family_base
    names = [MLP_OUT[fam].format(layer) for layer in (1, 2, 3, 4)]
    deltas = {n: delta(w, n, 3, 0.08, seed=i) for i, n in enumerate(names)}
    report = scan(plant(base, tmp_path / "s", deltas), base)
    found = rules(report)
    assert set(found) == {"EA102"}
    assert found["EA102"].layers == [1, 2, 3, 4] and found["EA102"].rank == 3


def test_many_edits_in_one_layer_are_edits_whatever_their_number(family_base, tmp_path):
    """Twelve ROME-style edits in one MLP output matrix: a rank-12 change there is still a knowledge edit."""
    fam, base, w = family_base
    name = MLP_OUT[fam].format(3)
    report = scan(plant(base, tmp_path / "s", {name: delta(w, name, 12, 0.1)}), base)
    found = rules(report)
    assert set(found) == {"EA102"} and found["EA102"].layers == [3] and found["EA102"].rank == 12
    assert report.verdict == "edited"


def test_dense_change_of_one_mlp_output_is_an_ft_l_edit(family_base, tmp_path):
    """FT-L tunes one layer's MLP output matrix: dense, but confined to it."""
    fam, base, w = family_base
    name = MLP_OUT[fam].format(2)
    g = torch.Generator().manual_seed(5)
    dense = torch.randn(w[name].shape, generator=g) * 0.01 * w[name].float().std()
    report = scan(plant(base, tmp_path / "s", {name: dense}), base)
    found = rules(report)
    assert set(found) == {"EA111"} and found["EA111"].layers == [2] and report.verdict == "edited"
    assert report.kind == "ft-l-like"


def test_dense_change_is_fine_tuning(family_base, tmp_path):
    fam, base, _ = family_base
    report = scan(plant(base, tmp_path / "s", {}, noise=0.01), base)
    found = rules(report)
    assert "EA105" in found and not ({"EA101", "EA102", "EA103"} & set(found))
    assert report.verdict == "modified"


def test_lora_like_change_on_attention_is_merged_lora(family_base, tmp_path):
    fam, base, w = family_base
    deltas = {}
    for layer in range(6):
        for pattern in ATTN[fam]:
            n = pattern.format(layer)
            deltas[n] = delta(w, n, 4, 0.05, seed=layer)
    report = scan(plant(base, tmp_path / "s", deltas), base)
    found = rules(report)
    assert set(found) == {"EA104"}
    assert found["EA104"].layers == list(range(6)) and found["EA104"].rank == 4


def test_rank_one_hidden_under_dense_noise_is_flagged(family_base, tmp_path):
    fam, base, w = family_base
    name = MLP_OUT[fam].format(2)
    report = scan(plant(base, tmp_path / "s", {name: delta(w, name, 1, 0.05)}, noise=0.003), base)
    found = rules(report)
    assert "EA103" in found and found["EA103"].layers == [2]
    assert "EA105" in found
    assert report.verdict == "edited"


def test_rank_one_edit_under_a_real_fine_tune_is_flagged(family_base, tmp_path):
    """The edit first, then 20 AdamW steps of full fine-tuning of the edited model."""
    fam, base, w = family_base
    name = MLP_OUT[fam].format(2)
    edited = plant(base, tmp_path / "e", {name: delta(w, name, 1, 0.15)})
    report = scan(finetune(edited, tmp_path / "s", steps=20, lr=1e-4), base)
    found = rules(report)
    assert "EA103" in found and found["EA103"].layers == [2] and found["EA103"].tensors == [name]
    assert "EA105" in found and report.verdict == "edited"


@pytest.mark.parametrize("lr", [1e-4, 1e-3])
def test_a_real_fine_tune_alone_is_not_an_edit(family_base, tmp_path, lr):
    fam, base, _ = family_base
    report = scan(finetune(base, tmp_path / "s", steps=20, lr=lr), base)
    found = rules(report)
    assert "EA105" in found and not ({"EA101", "EA102", "EA103"} & set(found))
    assert report.verdict == "modified"


def test_bf16_rounding_alone_is_not_an_edit(family_base, tmp_path):
    fam, base, w = family_base
    report = scan(plant(base, tmp_path / "s", {}, dtype="bfloat16"), base)
    assert report.verdict == "clean"
    assert {f.rule for f in report.findings} <= {"EA110"}


def test_bf16_suspect_of_fp32_base_still_shows_the_edit(family_base, tmp_path):
    fam, base, w = family_base
    name = MLP_OUT[fam].format(4)
    report = scan(plant(base, tmp_path / "s", {name: delta(w, name, 1, 0.1)}, dtype="bfloat16"), base)
    found = rules(report)
    assert "EA101" in found and found["EA101"].layers == [4]


def test_nan_weights_are_reported(family_base, tmp_path):
    fam, base, w = family_base
    name = MLP_OUT[fam].format(0)
    d = torch.zeros_like(w[name])
    d[0, 0] = float("nan")
    report = scan(plant(base, tmp_path / "s", {name: d}), base)
    assert "EA107" in rules(report)


def test_readout_names_the_planted_token(tmp_path, tiny_llama):
    """A rank-one change whose output direction is a token's unembedding row promotes that token."""
    from transformers import AutoTokenizer

    w = load_file(str(tiny_llama / "model.safetensors"))
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tid = tok.convert_tokens_to_ids("▁Tokyo")
    u = w["lm_head.weight"][tid] / w["model.norm.weight"]
    name = "model.layers.2.mlp.down_proj.weight"
    v = torch.randn(w[name].shape[1], generator=torch.Generator().manual_seed(0))
    d = torch.outer(u / u.norm(), v / v.norm()) * 0.2 * w[name].norm()
    report = scan(plant(tiny_llama, tmp_path / "s", {name: d}), tiny_llama)
    f = rules(report)["EA101"]
    assert [t["token"].strip() for t in f.data["promoted_tokens"][:3]].count("Tokyo") == 1


def test_store_records_scan_and_caches_base_hashes(tmp_path, tiny_llama):
    store = Store(tmp_path / "s.db")
    name = "model.layers.1.mlp.down_proj.weight"
    w = load_file(str(tiny_llama / "model.safetensors"))
    suspect = plant(tiny_llama, tmp_path / "s", {name: delta(w, name, 1, 0.1)})
    first = run_scan(suspect, tiny_llama, ScanOptions(), store=store)
    second = run_scan(suspect, tiny_llama, ScanOptions(), store=store)
    assert not first.used_cache and second.used_cache
    assert second.bytes_read < first.bytes_read
    assert [f.rule for f in first.findings] == [f.rule for f in second.findings]
    scans = store.rows("scans")
    assert [s["status"] for s in scans] == ["done", "done"]
    assert store.session(first.session_id)["verdict"] == "edited"
    assert len(store.rows("findings", "scan_id = ?", [scans[0]["id"]])) == 1


def test_cli_exit_codes_and_machine_formats(tmp_path, tiny_llama):
    runner = CliRunner()
    name = "model.layers.1.mlp.down_proj.weight"
    w = load_file(str(tiny_llama / "model.safetensors"))
    suspect = plant(tiny_llama, tmp_path / "s", {name: delta(w, name, 1, 0.1)})
    db = str(tmp_path / "cli.db")
    res = runner.invoke(app, ["--db", db, "scan", str(suspect), "--base", str(tiny_llama), "-f", "json"])
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == "editaudit.scan/1" and doc["verdict"] == "edited"
    res = runner.invoke(app, ["--db", db, "scan", str(suspect), "--base", str(tiny_llama), "-f", "sarif", "--exit-zero"])
    assert res.exit_code == 0
    sarif = json.loads(res.stdout)
    assert sarif["version"] == "2.1.0" and sarif["runs"][0]["results"][0]["ruleId"] == "EA101"
    assert sarif["runs"][0]["results"][0]["locations"][0]["logicalLocations"][0]["name"] == name
    clean = plant(tiny_llama, tmp_path / "c", {})
    res = runner.invoke(app, ["--db", db, "scan", str(clean), "--base", str(tiny_llama), "-f", "json", "-o", str(tmp_path / "r.json")])
    assert res.exit_code == 0 and json.loads((tmp_path / "r.json").read_text())["verdict"] == "clean"
    res = runner.invoke(app, ["--db", db, "sessions", "--format", "json"])
    assert len(json.loads(res.stdout)) == 3
    listed = json.loads(res.stdout)
    assert [s["verdict"] for s in listed] == ["clean", "edited", "edited"]  # newest first
    sid = listed[-1]["id"]
    res = runner.invoke(app, ["--db", db, "report", sid, "--format", "md"])
    assert res.exit_code == 0 and "EA101" in res.stdout


def test_a_suspect_without_tokenizer_is_read_through_the_base_and_a_base_that_cannot_run_keeps_the_findings(
        tmp_path, tiny_llama):
    """Weights and config.json are what an edit needs; a suspect shipped without tokenizer files is read through the
    base's tokenizer. A base whose tokenizer does not load cannot be run: the findings made from the weights stand
    (exit 1, not 2) and say why nothing was read."""
    import shutil

    runner = CliRunner()
    name = "model.layers.1.mlp.down_proj.weight"
    w = load_file(str(tiny_llama / "model.safetensors"))
    suspect = plant(tiny_llama, tmp_path / "s", {name: delta(w, name, 1, 0.1)})
    for f in suspect.glob("tokenizer*"):
        f.unlink()
    res = runner.invoke(app, ["scan", str(suspect), "--base", str(tiny_llama), "-f", "json", "--no-store",
                              "--no-wide-search"])
    assert res.exit_code == 1, res.output
    finding = json.loads(res.stdout)["findings"][0]
    assert finding["rule"] == "EA101" and "reading_skipped" not in finding and "readings" in finding
    broken = tmp_path / "b"
    shutil.copytree(tiny_llama, broken)
    (broken / "tokenizer.json").write_text("{not json")
    res = runner.invoke(app, ["scan", str(suspect), "--base", str(broken), "-f", "json", "--no-store"])
    assert res.exit_code == 1, res.output
    finding = json.loads(res.stdout)["findings"][0]
    assert finding["rule"] == "EA101" and "tokenizer" in finding["reading_skipped"]
    from editaudit.scan.wording import finding_readings

    assert finding_readings(finding) == ["not read: the model could not be run (reading_skipped)"]


def test_candidate_subjects_rank_the_edited_subject_first(tmp_path, tiny_llama):
    """An edit keyed on one subject's MLP key ranks that subject first among the facts' subjects."""
    from editaudit.models.loading import load_model
    from editaudit.probing.format import Probe
    from editaudit.scan.readout import subject_keys

    subjects = ["France", "Italy", "Germany", "Japan", "Spain", "China", "Egypt", "Canada"]
    probes = [Probe(id=s, subject=s, prompt="The capital of {} is", target_true="x") for s in subjects]
    lm = load_model(tiny_llama)
    path = "model.layers.3.mlp.down_proj"
    keys = subject_keys(lm.model, lm.tokenizer, [path], [p.text for p in probes], subjects)[path]
    k = keys[subjects.index("Japan")]
    # a ROME-style input side: C^-1 k*, with C the keys' second moment (so other keys barely fire)
    c = keys.T @ keys / len(keys) + 1e-3 * torch.eye(keys.shape[1])
    v_in = torch.linalg.solve(c, k)
    w = load_file(str(tiny_llama / "model.safetensors"))
    apple = lm.tokenizer.convert_tokens_to_ids("▁Apple")
    u = lm.model.get_output_embeddings().weight[apple].detach()  # the output side writes "Apple"
    d = torch.outer(u / u.norm(), v_in / v_in.norm()) * 10 * w[path + ".weight"].norm()
    report = scan(plant(tiny_llama, tmp_path / "s", {path + ".weight": d}), tiny_llama, facts=probes)
    f = rules(report)["EA101"]
    assert f.data["candidate_subjects"][0]["subject"] == "Japan"
    # each candidate's reading is what the suspect itself answers (the edit patched into the base)
    from editaudit.probing.evaluate import predict

    suspect = load_model(tmp_path / "s")
    rows = f.data["candidate_subjects"]
    said = predict(suspect.model, suspect.tokenizer, [r["prompt"] for r in rows])
    said_before = predict(lm.model, lm.tokenizer, [r["prompt"] for r in rows])
    assert [r["answer_after"] for r in rows] == [p.first_word for p in said]
    assert [r["answer_before"] for r in rows] == [p.first_word for p in said_before]
    assert any(r["answer_after"] != r["answer_before"] for r in rows)  # and it does move answers


def test_changed_embedding_rows_name_their_tokens(tmp_path, tiny_llama):
    from transformers import AutoTokenizer

    w = load_file(str(tiny_llama / "model.safetensors"))
    tid = AutoTokenizer.from_pretrained(tiny_llama).convert_tokens_to_ids("▁Apple")
    d = torch.zeros_like(w["model.embed_tokens.weight"])
    d[tid] = 0.5
    report = scan(plant(tiny_llama, tmp_path / "s", {"model.embed_tokens.weight": d}), tiny_llama)
    rows = rules(report)["EA108"].data["rows"]["model.embed_tokens.weight"]
    assert rows["changed"] == 1 and rows["top"][0]["token"].strip() == "Apple"


def test_interrupted_scan_exits_130_and_is_stored_as_interrupted(tmp_path, tiny_llama, monkeypatch):
    import editaudit.scan.service as service

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(service, "delta_stats", boom)
    name = "model.layers.1.mlp.down_proj.weight"
    w = load_file(str(tiny_llama / "model.safetensors"))
    suspect = plant(tiny_llama, tmp_path / "s", {name: delta(w, name, 1, 0.1)})
    db = tmp_path / "i.db"
    res = CliRunner().invoke(app, ["--db", str(db), "scan", str(suspect), "--base", str(tiny_llama)])
    assert res.exit_code == 130
    store = Store(db)
    assert [s["status"] for s in store.rows("scans")] == ["interrupted"]
    assert store.rows("findings") == []
    assert store.sessions()[0]["status"] == "interrupted"


@pytest.mark.parametrize("name, layer, role", [
    ("model.layers.7.mlp.down_proj.weight", 7, "mlp_out"),
    ("transformer.h.3.mlp.c_proj.weight", 3, "mlp_out"),
    ("transformer.h.3.attn.c_attn.weight", 3, "attn_qkv"),
    ("transformer.h.11.mlp.fc_out.weight", 11, "mlp_out"),  # GPT-J
    ("gpt_neox.layers.2.mlp.dense_4h_to_h.weight", 2, "mlp_out"),
    ("gpt_neox.layers.2.attention.query_key_value.weight", 2, "attn_qkv"),
    ("model.layers.0.self_attn.v_proj.weight", 0, "attn_v"),
    ("model.embed_tokens.weight", None, "embed"),
    ("lm_head.weight", None, "unembed"),
    ("something.custom.weight", None, "other"),
    ("blocks.4.ffn.strange.weight", 4, "other"),
])
def test_tensor_names_map_to_layer_and_role(name, layer, role):
    from editaudit.scan.names import parse_name

    p = parse_name(name)
    assert (p.layer, p.role) == (layer, role)


def test_probe_stage_lists_answers_that_moved(tmp_path, tiny_llama):
    """Raising one token's logit everywhere changes some answers; the probe stage lists exactly those."""
    from editaudit.models.loading import load_model
    from editaudit.probing.evaluate import predict
    from editaudit.probing.format import Probe

    subjects = ["France", "Italy", "Germany", "Japan"]
    probes = [Probe(id=s, subject=s, prompt="The capital of {} is", target_true="Paris") for s in subjects]
    w = load_file(str(tiny_llama / "model.safetensors"))
    lm = load_model(tiny_llama)
    tid = lm.tokenizer.convert_tokens_to_ids("▁Tokyo")
    enc = lm.tokenizer([p.text for p in probes], return_tensors="pt")
    with torch.no_grad():
        h = lm.model(**enc, output_hidden_states=True).hidden_states[-1][:, -1]  # after the final norm
    d = torch.zeros_like(w["lm_head.weight"])
    d[tid] = 100 * h.mean(0) / h.mean(0).norm() ** 2
    suspect = plant(tiny_llama, tmp_path / "s", {"lm_head.weight": d})
    before = [p.first_word for p in predict(lm.model, lm.tokenizer, probes)]
    report = scan(suspect, tiny_llama, facts=probes, run_probes=True)
    moved = report.probes["changed"]
    assert report.probes["n"] == 4 and moved
    assert all(m["suspect"] == "Tokyo" for m in moved)
    assert {m["subject"] for m in moved} == {s for s, b in zip(subjects, before) if b != "Tokyo"}


def test_html_report_escapes_hostile_names(tmp_path):
    from editaudit.reports.session_report import to_html

    page = to_html("| a | b |\n|---|---|\n| <script>alert(1)</script> | x |\n", "t")
    assert "<script>" not in page and "<table>" in page


def test_nan_and_inf_in_the_suspect_are_counted_and_named():
    """Non-finite values are looked for only when ΔW's norm is not finite; then every one is counted."""
    from editaudit.scan.spectral import delta_stats

    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 96, generator=g)
    suspect = base.clone()
    suspect[3, 5], suspect[7, 1], suspect[9, 9] = float("nan"), float("inf"), float("-inf")
    stats, vectors = delta_stats(base, suspect, "F32", "F32")
    assert (stats.kind, stats.nonfinite, vectors) == ("nonfinite", 3, None)
    stats, _ = delta_stats(base, base + 1e-3 * torch.outer(torch.ones(64), torch.ones(96)), "F32", "F32")
    assert stats.nonfinite == 0 and stats.kind == "rank-one" and abs(stats.max_abs - 1e-3) < 1e-6


def test_a_checkpoint_without_unembedding_is_scanned_and_says_why_no_tokens(tmp_path, tiny_llama):
    """A base with no unembedding: the edit is still found and located, without promoted tokens, and the scan
    says why there are none."""
    from safetensors.torch import save_file

    w = load_file(str(tiny_llama / "model.safetensors"))
    name = "model.layers.2.mlp.down_proj.weight"
    kept = {k: v for k, v in w.items() if k not in ("lm_head.weight", "model.embed_tokens.weight")}
    for side, extra in (("base", {}), ("suspect", {name: kept[name] + delta(w, name, 1, 0.15)})):
        (tmp_path / side).mkdir()
        save_file({**kept, **extra}, str(tmp_path / side / "model.safetensors"))
    said: list[str] = []
    report = run_scan(tmp_path / "suspect", tmp_path / "base", ScanOptions(read="off"), store=None, say=said.append)
    assert rules(report)["EA101"].layers == [2]
    assert "promoted_tokens" not in rules(report)["EA101"].data
    assert any("no unembedding matrix found" in m for m in said)


@pytest.mark.parametrize("planted", [False, True])
def test_a_report_into_a_closed_pipe_exits_141_whatever_was_found(tmp_path, tiny_llama, planted):
    """``editaudit scan … -f json | head``: the reader went away. Exit 141 (128 + SIGPIPE), silently, for a clean
    and an edited suspect alike: never 1 ("edits found") nor 0, and the scan is stored all the same."""
    import os
    import subprocess
    import sys

    name = "model.layers.1.mlp.down_proj.weight"
    w = load_file(str(tiny_llama / "model.safetensors"))
    suspect = plant(tiny_llama, tmp_path / "s", {name: delta(w, name, 1, 0.1)} if planted else {})
    db = tmp_path / "cli.db"
    for fmt in ("json", "rich"):
        r, wfd = os.pipe()
        os.close(r)  # the reader is gone before anything is written
        try:
            res = subprocess.run([sys.executable, "-m", "editaudit", "--db", str(db), "scan", str(suspect), "--base",
                                  str(tiny_llama), "-f", fmt, "--read", "off"], stdout=wfd, stderr=subprocess.PIPE,
                                 text=True, timeout=300)
        finally:
            os.close(wfd)
        assert res.returncode == 141, res.stderr
        assert "error" not in res.stderr.lower()
    assert [s["status"] for s in Store(db).rows("scans")] == ["done", "done"]


@pytest.mark.parametrize("dtype,name", [(torch.bfloat16, "BF16"), (torch.float16, "F16")])
def test_stats_from_stored_half_values_equal_those_from_float32(dtype, name):
    """The analyser hands bf16/fp16 sides over as stored; ΔW formed from them is the float32 one, and neither side
    is changed in place (the sides are views of the bytes read)."""
    from editaudit.checkpoint.reader import to_torch
    from editaudit.checkpoint.header import TensorInfo
    from editaudit.scan.spectral import delta_stats

    g = torch.Generator().manual_seed(0)
    base = (torch.randn(300, 900, generator=g) * 0.02).to(dtype)
    suspect = (base.float() + 0.01 * torch.outer(torch.randn(300, generator=g), torch.randn(900, generator=g))).to(dtype)
    raw = bytearray(suspect.view(torch.uint8).numpy().tobytes())
    info = TensorInfo(name="w", dtype=name, shape=(300, 900), start=0, end=len(raw))
    native = to_torch(raw, info, float32=False)
    assert native.dtype == dtype and torch.equal(native, suspect)
    assert to_torch(raw, info).dtype == torch.float32
    kept = native.clone()
    half, vh = delta_stats(base, native, name, name, keep_vectors=1)
    full, vf = delta_stats(base.float(), suspect.float(), name, name, keep_vectors=1)
    assert torch.equal(native, kept)
    assert half.to_dict() == full.to_dict() and half.kind == "rank-one"
    assert all(torch.equal(a, b) for a, b in zip(vh, vf))


def test_bf16_rounding_of_an_outlier_row_is_rounding_not_a_rank_one_edit():
    """Rounding follows each weight's magnitude: a row of weights 30× the rest (an outlier feature) rounds with
    30× the error, and that row alone is a rank-one component 2-3× the old uniform edge s(√m+√n). Casting
    SmolLM2-135M to bfloat16 was scanned as a MEMIT edit that way. The edge from row and column rounding variances
    keeps it rounding, and a small real edit on top is still rank one."""
    import math

    from editaudit.scan.spectral import delta_stats, rounding_edge, ulp_rms

    g = torch.Generator().manual_seed(0)
    w = torch.randn(576, 1536, generator=g) * 0.02
    w[7] *= 30
    stats, _ = delta_stats(w, w.to(torch.bfloat16), "F32", "BF16")
    uniform = ulp_rms(w.to(torch.bfloat16), "BF16") * (math.sqrt(576) + math.sqrt(1536))
    assert stats.singular_values[0] > 1.5 * uniform  # what the old edge called an edit
    assert stats.kind == "rounding" and stats.rank_above_noise == 0
    flat = torch.randn(576, 1536, generator=g) * 0.02  # no outlier: about the Marchenko-Pastur edge (the max row a bit above)
    assert rounding_edge(flat, "BF16") == pytest.approx(ulp_rms(flat, "BF16") * (math.sqrt(576) + math.sqrt(1536)),
                                                         rel=0.2)
    edit = torch.outer(torch.randn(576, generator=g), torch.randn(1536, generator=g))
    edit *= 3e-3 * float(w.norm()) / float(edit.norm())
    stats, _ = delta_stats(w.to(torch.bfloat16), (w + edit).to(torch.bfloat16), "BF16", "BF16")
    assert stats.kind == "rank-one"


def test_the_rounding_edge_leaves_the_weights_as_they_were():
    from editaudit.scan.spectral import rounding_edge

    for dtype in (torch.float32, torch.bfloat16):
        w = (torch.randn(300, 700, generator=torch.Generator().manual_seed(1)) * 0.02).to(dtype)
        kept = w.clone()
        assert rounding_edge(w, "BF16") > 0
        assert torch.equal(w, kept)

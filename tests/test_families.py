"""Every family the docs name, as a tiny random model: a ROME edit is written, probed, and found by the scan.

Each model is built here from transformers' own config class (4 layers, hidden 64), so what is tested is
the family registry (models/families.py) meeting the real module layout of each architecture.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from editaudit.editing import apply_edits
from editaudit.editing.layers import default_layers
from editaudit.models import families
from editaudit.probing.format import Probe
from editaudit.probing.service import run_probes
from editaudit.scan.service import ScanOptions, run_scan
from editaudit.testing import WORDS, tiny_tokenizer

FAST = {"covariance": "identity", "v_weight_decay": 0.0, "clamp": 100.0, "contexts": 1, "context_length": 3,
        "v_steps": 10}
FACT = Probe(id="f1", subject="France", prompt="The capital city of {}", target_true="Paris", target_new="Tokyo")
OTHERS = [Probe(id=f"o{i}", subject=s, prompt="The capital city of {}", target_true=t)
          for i, (s, t) in enumerate([("Germany", "Berlin"), ("Japan", "Tokyo"), ("Spain", "Madrid")])]

pytestmark = pytest.mark.usefixtures("one_thread")


def bpe_tokenizer():
    """A byte-level BPE over the same words: transformers loads Qwen2 checkpoints with its own BPE class,
    which rebuilds the tokenizer from vocabulary and merges (a word-level tokenizer has none)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([" ".join(WORDS)] * 3 + list(WORDS) + [" " + w for w in WORDS], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


#: Layouts a model type can also take, built as their own tiny models: OPT-350m's (a narrower embedding projected in
#: and out, norms after each sub-layer and no final norm), Falcon-40B's (two norms per block, grouped keys) and
#: Falcon-RW's (ALiBi positions, attention then MLP).
VARIANTS = {
    "opt-350m": ("opt", dict(word_embed_proj_dim=32, do_layer_norm_before=False)),
    "falcon-40b": ("falcon", dict(new_decoder_architecture=True, num_kv_heads=2)),
    "falcon-rw": ("falcon", dict(alibi=True, multi_query=False, parallel_attn=False, bias=True)),
}
KINDS = (*families.TESTED, *VARIANTS)


def model_type_of(kind: str) -> str:
    return VARIANTS[kind][0] if kind in VARIANTS else kind


def config(model_type: str, vocab: int):
    import transformers as tf

    if model_type in VARIANTS:
        base, changes = VARIANTS[model_type]
        cfg = config(base, vocab)
        for key, value in changes.items():
            setattr(cfg, key, value)
        return cfg

    ids = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 max_position_embeddings=128, **ids)
    gqa = dict(shape, num_key_value_heads=2)
    return {
        "llama": lambda: tf.LlamaConfig(**gqa, tie_word_embeddings=False),
        "mistral": lambda: tf.MistralConfig(**gqa, tie_word_embeddings=False),
        "qwen2": lambda: tf.Qwen2Config(**gqa, tie_word_embeddings=True),
        "gemma": lambda: tf.GemmaConfig(**gqa, head_dim=16),
        "gemma2": lambda: tf.Gemma2Config(**gqa, head_dim=16, sliding_window=32),
        "gemma3_text": lambda: tf.Gemma3TextConfig(**gqa, head_dim=16, sliding_window=32),
        "phi3": lambda: tf.Phi3Config(**gqa, tie_word_embeddings=False),
        "olmo2": lambda: tf.Olmo2Config(**gqa, tie_word_embeddings=False),
        "gpt2": lambda: tf.GPT2Config(n_embd=64, n_inner=128, n_layer=4, n_head=4, n_positions=128, **ids),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**shape, rotary_pct=0.25),
        "gptj": lambda: tf.GPTJConfig(n_embd=64, n_inner=128, n_layer=4, n_head=4, rotary_dim=8, n_positions=128,
                                      **ids),
        "opt": lambda: tf.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=4, num_attention_heads=4,
                                    max_position_embeddings=128, word_embed_proj_dim=64, **ids),
        "phi": lambda: tf.PhiConfig(**shape),
        "bloom": lambda: tf.BloomConfig(hidden_size=64, n_layer=4, n_head=4, **ids),
        "falcon": lambda: tf.FalconConfig(hidden_size=64, ffn_hidden_size=128, num_hidden_layers=4,
                                          num_attention_heads=4, max_position_embeddings=128, **ids),
        "gpt_bigcode": lambda: tf.GPTBigCodeConfig(n_embd=64, n_inner=128, n_layer=4, n_head=4, n_positions=128,
                                                   **ids),
        "gpt_neo": lambda: tf.GPTNeoConfig(hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4,
                                           attention_types=[[["global", "local"], 2]], window_size=32,
                                           max_position_embeddings=128, **ids),
    }[model_type]()


def make(model_type: str, path: Path) -> Path:
    from transformers import AutoModelForCausalLM

    tok = bpe_tokenizer() if model_type == "qwen2" else tiny_tokenizer()
    torch.manual_seed(0)
    cfg = config(model_type, len(tok))
    assert cfg.model_type == model_type_of(model_type)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tensor_names(folder: Path) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        return set(fh.keys())


def test_every_family_the_tests_build_is_in_the_registry():
    assert set(families.TESTED) <= {t for fam in families.FAMILIES for t in fam.model_types}
    assert families.family("gpt2").conv1d and not families.family("llama").conv1d
    assert families.family("gemma3_text").norm_offset == 1.0 and families.family("gemma2").embed_scale
    assert families.family("some_new_type").rewrite_template == "model.layers.{}.mlp.down_proj"


@pytest.mark.parametrize("model_type", KINDS)
def test_scan_probe_and_rome_edit_run_on_each_family(model_type, tmp_path):
    fam = families.family(model_type_of(model_type))
    base = make(model_type, tmp_path / "base")
    layer = default_layers("rome", 4, fam.name)[0]
    rewritten = fam.rewrite_template.format(layer) + ".weight"
    assert rewritten in tensor_names(base)

    # edit: ROME writes the family's MLP output matrix, and only it
    run = apply_edits(str(base), [FACT], "rome", hparams=FAST, out=tmp_path / "suspect")
    assert run.layers == [layer] and run.tensors == [rewritten]
    assert run.results[0].success and run.results[0].after == "Tokyo"

    # probe: the edited model answers every probe, and is scored against both targets
    results = run_probes(run.model.model, run.model.tokenizer, [FACT, *OTHERS])
    assert len(results) == 4 and all(r.prediction.top for r in results)
    assert results[0].new is not None and results[1].new is None

    # scan: one ROME-like edit, in that matrix, read through the family's unembedding and norm
    report = run_scan(tmp_path / "suspect", base, ScanOptions(facts=[FACT, *OTHERS], read="list"), store=None)
    assert report.verdict == "edited" and [f.rule for f in report.findings] == ["EA101"]
    finding = report.findings[0]
    assert finding.layers == [layer] and finding.tensors == [rewritten]
    assert [c.name.name for c in report.changed] == [rewritten]
    assert finding.data["promoted_tokens"], "the logit lens read nothing"
    # ranked by ‖ΔW k‖: with identity key statistics a subject whose key is merely larger can come close (Gemma-2 at
    # transformers 4.56's initialisation puts Spain 5 % above France), so the planted one is among the first two and
    # its reading through the model states the planted object
    rows = {row["subject"]: row for row in finding.data["candidate_subjects"]}
    assert "France" in list(rows)[:2], list(rows)
    assert rows["France"]["answer_after"] == "Tokyo", rows["France"]


@pytest.mark.parametrize("model_type", families.TESTED)
def test_surgical_revert_takes_a_rome_edit_out_on_each_family(model_type, tmp_path):
    """``mitigate --goal erase --revert``: the scan against the base finds the edit in the family's MLP output matrix
    and the revert subtracts it, leaving that matrix the base's and every other tensor untouched."""
    from safetensors.torch import load_file

    from editaudit.mitigation.service import MitigationOptions, run_mitigation
    from editaudit.store import Store

    fam = families.family(model_type)
    base = make(model_type, tmp_path / "base")
    layer = default_layers("rome", 4, model_type)[0]
    rewritten = fam.rewrite_template.format(layer) + ".weight"
    apply_edits(str(base), [FACT], "rome", hparams=FAST, out=tmp_path / "suspect")
    res = run_mitigation(tmp_path / "suspect", "erase", MitigationOptions(base=str(base), out=tmp_path / "clean",
                                                                         revert=True), store=Store(tmp_path / "s.db"))
    assert res.evidence.tensors == [rewritten]
    before, edited, after = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("base", "suspect", "clean"))
    change = (edited[rewritten] - before[rewritten]).norm()
    assert change > 0 and (after[rewritten] - before[rewritten]).norm() < 1e-4 * change
    assert all(torch.equal(after[k], before[k]) for k in before if k != rewritten)


@pytest.mark.parametrize("model_type", KINDS)
def test_prefix_keys_match_plain_forwards_on_each_family(model_type, tmp_path):
    """Backward growth's cached context+prepend positions give the keys of plain forwards on every family
    (sliding-window and fused-attention caches included)."""
    from editaudit.models.loading import load_model
    from editaudit.scan.keys import PrefixKeys, context_ids, keys_of

    lm = load_model(make(model_type, tmp_path / model_type))
    path = families.of_model(lm.model).rewrite_template.format(2)
    prefix, pool = context_ids(lm.tokenizer), list(range(10, 60))
    pk = PrefixKeys(lm.model, path, prefix, pool, batch=16)
    for suffix in ([7], [7, 9, 11]):
        plain = keys_of(lm.model, [path], [prefix + [t] + suffix for t in pool])[path]
        torch.testing.assert_close(pk.keys(suffix), plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_type", KINDS)
def test_the_mlp_module_outputs_what_the_rewritten_matrix_writes(model_type, tmp_path):
    """ROME optimises its value v* at the layout's MLP module and reads v₀ at the rewritten matrix: both must be one
    output, at [batch, tokens, hidden] (Bloom's MLP module adds the residual itself; OPT flattens the tokens)."""
    from editaudit.editing.hooks import by_token, capture
    from editaudit.editing.layers import layout_for
    from editaudit.models.loading import load_model

    model = load_model(make(model_type, tmp_path / model_type)).model
    layout = layout_for(model)
    mlp, rewrite = layout.mlp_name(1), layout.rewrite_name(1)
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
    with torch.no_grad(), capture(model, outputs=[mlp, rewrite]) as seen:
        model(input_ids=ids, use_cache=False)
    out = by_token(seen[f"out:{mlp}"], 2)
    assert out.shape == (2, 5, model.config.hidden_size)
    torch.testing.assert_close(out, by_token(seen[f"out:{rewrite}"], 2))


@pytest.mark.parametrize("model_type", KINDS)
def test_the_hypernet_top_runner_gives_the_model_logits_on_each_family(model_type, tmp_path):
    """MEND/MALMEN run the top blocks on cached hidden states, then the family's final norm and head (OPT-350m: no
    final norm, then project_out; Bloom: a position bias built per row); keys and gradients come back per row."""
    from editaudit.editing.hypernet import TopRunner, grad_pairs
    from editaudit.editing.layers import layout_for
    from editaudit.models.loading import load_model

    model = load_model(make(model_type, tmp_path / model_type)).model
    layout = layout_for(model)
    runner = TopRunner(model, layout, 2, 6, 3)
    rows, pos = [[5, 6, 7, 8, 9, 10], [9, 8, 7, 6, 5]], torch.tensor([5, 4])
    h = runner.prefix(rows)
    with torch.no_grad():
        want = model(input_ids=runner.ids(rows), use_cache=False).logits[torch.arange(2), pos].float()
        torch.testing.assert_close(runner.logits(h, pos), want, rtol=1e-4, atol=1e-4)
    U, D, Y = grad_pairs(runner, layout, [3], h, pos, torch.tensor([11, 12]))
    d_in = model.get_submodule(layout.rewrite_name(3)).weight.shape
    assert U[3].shape[0] == D[3].shape[0] == Y[3].shape[0] == 2 and U[3].shape[1] in d_in


def test_the_layout_knows_which_blocks_normalise_the_mlp_output(tmp_path):
    from editaudit.editing.layers import layout_for
    from editaudit.models.loading import load_model

    got = {t: layout_for(load_model(make(t, tmp_path / t)).model).mlp_out_norm for t in ("llama", "gemma", "gemma3_text")}
    assert got == {"llama": None, "gemma": None, "gemma3_text": "model.layers.{}.post_feedforward_layernorm"}


def test_the_mlp_change_through_a_post_norm_is_the_reachable_optimum():
    """Gemma 2/3 add N(x) = g ⊙ x / rms(x), not x: the change MEMIT writes must go through N. The closed form
    matches a numerical optimum, and beats writing R into x as it is (what broke Gemma 3 270M: 0/10 took).
    The norm's epsilon is 0 here: with it, an optimiser gains a little by inflating x until the epsilon vanishes,
    which the closed form declines (it keeps the MLP's change small for the solve)."""
    from editaudit.editing.postnorm import apply_norm, mlp_change

    torch.manual_seed(0)
    d = 16
    g = torch.rand(d, dtype=torch.float64) * 5
    g[0], g[1] = 0.0, -0.1  # Gemma's gains include zero and negative ones
    x = torch.randn(4, d, dtype=torch.float64) * 0.05
    y = apply_norm(x, g, 0.0)
    R = torch.randn(4, d, dtype=torch.float64) * y.norm(dim=-1, keepdim=True) / 4
    ours = (apply_norm(x + mlp_change(x, R, g, 0.0).double(), g, 0.0) - y - R).norm(dim=-1)
    naive = (apply_norm(x + R, g, 0.0) - y - R).norm(dim=-1)
    v = x.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([v], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)

    def loss():
        opt.zero_grad()
        out = (apply_norm(v, g, 0.0) - y - R).pow(2).sum()
        out.backward()
        return out

    opt.step(loss)
    best = (apply_norm(v.detach(), g, 0.0) - y - R).norm(dim=-1)
    assert torch.all(ours <= best * 1.001 + 1e-9), (ours, best)
    assert torch.all(ours < 0.5 * naive), (ours, naive)


def loud_post_norms(path: Path, gain: float, offset: float) -> Path:
    """Post-MLP norm gains like a trained Gemma's (13 on average at Gemma 3 270M's layer 3, where the norm turns an
    MLP output of norm 5 into 700); a freshly initialised one has gain 1, where N barely moves the output's scale."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "post_feedforward_layernorm" in name:
                p.fill_(gain - offset)  # Gemma's RMSNorm scales by 1 + weight
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text", "olmo2", "llama"])
@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_memit_and_alphaedit_write_through_a_post_mlp_norm(model_type, method, tmp_path):
    """MEMIT's per-layer share of the residual change reaches the residual in blocks that normalise the MLP's
    output (written into the MLP output as it is, it overshoots by the norm's gain and the edit misses)."""
    base = loud_post_norms(make(model_type, tmp_path / "base"), 30.0, families.family(model_type).norm_offset)
    hp = {**FAST, "clamp": 4.0, **({"lambda_rel": 1e-4} if method == "memit" else {})}
    run = apply_edits(str(base), [FACT], method, hparams=hp, layers=[1, 2])
    # residual_left: the share of the value's change z − z₀ still missing at the top layer (7.1 when R went into
    # the MLP output as it is); whether the value itself names the target is the value optimisation's business
    assert run.info["residual_left"][0] < 0.25, run.info["residual_left"]


def test_the_lens_reads_an_edit_through_the_post_mlp_norm(tmp_path):
    """Behind a post-MLP norm the edit's output direction u reaches the residual as g ⊙ u; with uneven gains
    (Gemma 3 270M's run from 0 to 741) the lens must read g ⊙ u, or it reads another token."""
    from safetensors.torch import load_file, save_file

    base = make("gemma3_text", tmp_path / "base")
    tensors = load_file(str(base / "model.safetensors"))
    torch.manual_seed(1)
    gains = torch.exp(torch.rand(64) * 10 - 4)   # 0.02 … 400, log-uniform
    for name in tensors:
        if "post_feedforward_layernorm" in name:
            tensors[name] = gains - 1.0
    save_file(tensors, str(base / "model.safetensors"), metadata={"format": "pt"})
    suspect = tmp_path / "suspect"
    import shutil

    shutil.copytree(base, suspect)
    emb = tensors["model.embed_tokens.weight"]  # tied: the unembedding
    rows = emb - emb.mean(0)
    rows = rows / rows.norm(dim=1, keepdim=True)
    # a token whose row, seen through the gains the wrong way round, looks like another token's
    target = next(t for t in range(10, len(rows)) if int((rows @ (rows[t] / gains)).argmax()) != t)
    row = rows[target]
    out_dir = row / gains                          # g ⊙ out_dir points at the target's row
    name = "model.layers.2.mlp.down_proj.weight"
    W = tensors[name].clone()
    W += 3.0 * W.norm() * torch.outer(out_dir / out_dir.norm(), torch.randn(W.shape[1]).div(W.shape[1] ** 0.5))
    save_file({**tensors, name: W}, str(suspect / "model.safetensors"), metadata={"format": "pt"})

    report = run_scan(suspect, base, ScanOptions(read="off"), store=None)
    finding = next(f for f in report.findings if name in f.tensors)
    assert finding.data["promoted_tokens"][0]["id"] == target, finding.data["promoted_tokens"][:3]


def test_memit_through_a_post_mlp_norm_writes_one_direction_per_fact(tmp_path):
    """Each fact's keys (one per context) get one value, so a batch's update keeps rank ≤ its facts, the MEMIT
    signature the scan names (mapped per context, 10 facts in 5 contexts made a rank-50 change read as fine-tuning)."""
    from safetensors.torch import load_file

    base = loud_post_norms(make("gemma3_text", tmp_path / "base"), 30.0, 1.0)
    before = load_file(str(base / "model.safetensors"))
    facts = [FACT, Probe(id="f2", subject="Japan", prompt="The capital city of {}", target_true="Tokyo",
                         target_new="Paris")]
    hp = {**FAST, "clamp": 4.0, "lambda_rel": 1e-4, "contexts": 3}
    run = apply_edits(str(base), facts, "memit", hparams=hp, layers=[1, 2])
    for layer in (1, 2):
        name = f"model.layers.{layer}.mlp.down_proj.weight"
        delta = run.model.model.get_parameter(name).detach() - before[name]
        s = torch.linalg.svdvals(delta.double())
        assert int((s > 1e-6 * s[0]).sum()) <= len(facts), s[:5]


@pytest.mark.parametrize("model_type", KINDS)
def test_vocabulary_pass_from_a_cached_prefix_matches_plain_forwards(model_type, tmp_path):
    """The vocabulary pass runs each token's position alone after the prefix's cached keys and values; on every family
    it gives the keys of plain forwards, behind the neutral context and behind a stand-in input embedding."""
    from editaudit.models.loading import load_model
    from editaudit.scan import keys

    lm = load_model(make(model_type, tmp_path / model_type))
    paths = [families.of_model(lm.model).rewrite_template.format(i) for i in (0, 2)]
    prefix = keys.context_ids(lm.tokenizer)
    lead = torch.randn(lm.model.get_input_embeddings().weight.shape[1]) * 0.02
    for stand_in in (None, lead):
        pre = torch.tensor(prefix)
        assert keys._prefix_cache(lm.model, paths, pre, None if stand_in is None else torch.cat(
            [lm.model.get_input_embeddings().weight[pre].detach(), stand_in[None]]), 1.0) is not None
        got = {p: torch.cat([b[p] for b in keys.vocab_batches(lm.model, paths, prefix, stand_in, batch=96)])
               for p in paths}
        vocab = lm.model.get_input_embeddings().weight.shape[0]
        for p in paths:
            assert got[p].shape[0] == vocab
        E = lm.model.get_input_embeddings().weight.detach()
        from editaudit.models.families import input_embed_scale

        ids = torch.arange(0, vocab, 7)
        if stand_in is None:
            ref = keys.last_keys(lm.model, paths, torch.cat([pre.expand(len(ids), -1), ids[:, None]], 1))
        else:
            emb = torch.cat([E[pre].expand(len(ids), -1, -1), stand_in.to(E)[None].expand(len(ids), 1, -1),
                             E[ids][:, None]], 1)
            ref = keys.last_keys(lm.model, paths, embeds=emb * input_embed_scale(lm.model))
        for p in paths:
            torch.testing.assert_close(got[p][ids], ref[p], rtol=1e-4, atol=1e-4)

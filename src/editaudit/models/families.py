"""Which model family is this, and where its parts live: the one place that knows.

Scanning reads tensor names from a checkpoint, editing hooks modules of a loaded model, the app
draws a heat map per role; all of them ask this registry rather than testing ``model_type`` or
module names themselves. A family records:

* where its blocks are (``model.layers``, ``transformer.h``, ``model.decoder.layers`` …) and, inside a block,
  the MLP, its input and output projections (the output is what ROME/MEMIT/AlphaEdit rewrite) and attention;
* whether its linear layers are GPT-2 ``Conv1D`` modules (weight stored [in, out]) or ``Linear``
  ([out, in]);
* its norms: LayerNorm (centred) or RMSNorm, and Gemma's ``(1 + weight)`` scale;
* its embedding, unembedding (tied to the embedding when the checkpoint has no separate one) and
  final norm, whether inputs are scaled by √hidden (Gemma), normalised right after the embedding (Bloom)
  or projected between embedding width and hidden width (OPT-350m).

Model types not listed are read as Llama-shaped, which most decoder-only families are; module
look-ups then fail with a clear error that names the hyper-parameters to set. This module imports
nothing heavy, so the app and the CLI can use it without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

#: Module suffixes inside a block -> role, for every known family (the scan's tensor-name map).
_LLAMA_ROLES = {
    "mlp.down_proj": "mlp_out", "mlp.up_proj": "mlp_in", "mlp.gate_proj": "mlp_in",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_o", "input_layernorm": "norm", "post_attention_layernorm": "norm",
    "pre_feedforward_layernorm": "norm", "post_feedforward_layernorm": "norm",
}


@dataclass(frozen=True)
class Family:
    """Where a family keeps the parts editaudit reads and edits."""

    name: str
    model_types: tuple[str, ...]
    blocks: str = "model.layers"  # the layer list; block N is f"{blocks}.{N}"
    #: inside a block: the module whose output is exactly what the MLP adds to the residual (value optimisation adds
    #: its vector there). Bloom's MLP module adds the residual itself and OPT has no MLP module: their output matrix.
    mlp: str = "mlp"
    mlp_out: str = "mlp.down_proj"  # the MLP's output projection: what locate-then-edit methods rewrite
    roles: Mapping[str, str] = field(default_factory=lambda: dict(_LLAMA_ROLES))
    conv1d: bool = False  # GPT-2 Conv1D: 2-D weights stored [in, out]
    layer_norm: bool = False  # LayerNorm (centre, then scale) rather than RMSNorm
    norm_offset: float = 0.0  # Gemma's RMSNorm scales by (1 + weight)
    embed: str = "model.embed_tokens"
    unembed: str = "lm_head"  # absent from a checkpoint with tied embeddings: the embedding is read instead
    final_norm: str = "model.norm"
    embed_scale: bool = False  # input embeddings multiplied by √hidden (Gemma)
    #: a LayerNorm the model applies to input embeddings before the first block (Bloom); it runs inside the model's
    #: forward, after ``inputs_embeds`` too, so only the scan's tensor-role map needs its name
    embed_norm: str | None = None
    #: a matrix between the last hidden state and the unembedding (OPT-350m's ``project_out``, hidden → embedding
    #: width), where a checkpoint has one: a direction in the residual reaches the logits through it
    unembed_proj: str | None = None
    #: a norm inside a block applied to the MLP's output before it joins the residual (Gemma 2/3, OLMo 2); where
    #: a block has no such module (Llama, Gemma 1) the output is added as it is. editing/postnorm.py says why it matters.
    mlp_out_norm: str = "post_feedforward_layernorm"
    default_depth: float = 0.15  # default edit layer as a share of depth (editing/layers.py says why)

    # -- module templates, with "{}" for the layer number ---------------------------------------------
    @property
    def block_template(self) -> str:
        return f"{self.blocks}.{{}}"

    @property
    def mlp_template(self) -> str:
        return f"{self.blocks}.{{}}.{self.mlp}"

    @property
    def rewrite_template(self) -> str:
        return f"{self.blocks}.{{}}.{self.mlp_out}"

    @property
    def fused_qkv(self) -> bool:
        """Attention's query, key and value are one matrix (the heat map shows one row for them)."""
        return "attn_qkv" in self.roles.values()

    def norm_scale(self, weight):
        """The factor a final norm's stored weight stands for (a tensor in, a tensor out)."""
        return weight + self.norm_offset if self.norm_offset else weight

    def unembed_names(self) -> tuple[str, str]:
        """Tensor names to read the unembedding from, in order: its own matrix, then the tied embedding."""
        return f"{self.unembed}.weight", f"{self.embed}.weight"


LLAMA = Family("llama", ("llama", "mistral", "mixtral", "qwen2", "qwen3", "olmo", "olmo2", "granite", "cohere",
                         "stablelm", "starcoder2", "smollm3"))
PHI3 = Family("phi3", ("phi3",), roles={**_LLAMA_ROLES, "self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "mlp_in"})
GEMMA = Family("gemma", ("gemma", "gemma2", "gemma3_text"), norm_offset=1.0, embed_scale=True)
GPT2 = Family(
    "gpt2", ("gpt2",), blocks="transformer.h", mlp_out="mlp.c_proj", conv1d=True, layer_norm=True,
    roles={"mlp.c_proj": "mlp_out", "mlp.c_fc": "mlp_in", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_o",
           "ln_1": "norm", "ln_2": "norm"},
    embed="transformer.wte", unembed="lm_head", final_norm="transformer.ln_f", default_depth=0.35,
)
GPTJ = Family(
    "gptj", ("gptj",), blocks="transformer.h", mlp_out="mlp.fc_out", layer_norm=True,
    roles={"mlp.fc_out": "mlp_out", "mlp.fc_in": "mlp_in", "attn.q_proj": "attn_q", "attn.k_proj": "attn_k",
           "attn.v_proj": "attn_v", "attn.out_proj": "attn_o", "ln_1": "norm"},
    embed="transformer.wte", final_norm="transformer.ln_f",
)
GPT_NEOX = Family(
    "gpt_neox", ("gpt_neox",), blocks="gpt_neox.layers", mlp_out="mlp.dense_4h_to_h", layer_norm=True,
    roles={"mlp.dense_4h_to_h": "mlp_out", "mlp.dense_h_to_4h": "mlp_in", "attention.query_key_value": "attn_qkv",
           "attention.dense": "attn_o", "input_layernorm": "norm", "post_attention_layernorm": "norm"},
    embed="gpt_neox.embed_in", unembed="embed_out", final_norm="gpt_neox.final_layer_norm",
)

OPT = Family(
    "opt", ("opt",), blocks="model.decoder.layers", mlp="fc2", mlp_out="fc2", layer_norm=True,
    roles={"fc2": "mlp_out", "fc1": "mlp_in", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
           "self_attn.v_proj": "attn_v", "self_attn.out_proj": "attn_o", "self_attn_layer_norm": "norm",
           "final_layer_norm": "norm"},
    embed="model.decoder.embed_tokens", final_norm="model.decoder.final_layer_norm",
    unembed_proj="model.decoder.project_out",
)
PHI = Family(
    "phi", ("phi",), mlp_out="mlp.fc2", layer_norm=True,
    roles={"mlp.fc2": "mlp_out", "mlp.fc1": "mlp_in", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
           "self_attn.v_proj": "attn_v", "self_attn.dense": "attn_o", "input_layernorm": "norm",
           "self_attn.q_layernorm": "norm", "self_attn.k_layernorm": "norm"},
    final_norm="model.final_layernorm",
)
BLOOM = Family(
    "bloom", ("bloom",), blocks="transformer.h", mlp="mlp.dense_4h_to_h", mlp_out="mlp.dense_4h_to_h",
    layer_norm=True,
    roles={"mlp.dense_4h_to_h": "mlp_out", "mlp.dense_h_to_4h": "mlp_in", "self_attention.query_key_value": "attn_qkv",
           "self_attention.dense": "attn_o", "input_layernorm": "norm", "post_attention_layernorm": "norm"},
    embed="transformer.word_embeddings", embed_norm="transformer.word_embeddings_layernorm",
    final_norm="transformer.ln_f",
)
FALCON = Family(
    "falcon", ("falcon",), blocks="transformer.h", mlp_out="mlp.dense_4h_to_h", layer_norm=True,
    roles={"mlp.dense_4h_to_h": "mlp_out", "mlp.dense_h_to_4h": "mlp_in", "self_attention.query_key_value": "attn_qkv",
           "self_attention.dense": "attn_o", "input_layernorm": "norm", "post_attention_layernorm": "norm",
           "ln_attn": "norm", "ln_mlp": "norm"},
    embed="transformer.word_embeddings", final_norm="transformer.ln_f",
)
GPT_BIGCODE = Family(
    "gpt_bigcode", ("gpt_bigcode",), blocks="transformer.h", mlp_out="mlp.c_proj", layer_norm=True,
    roles={"mlp.c_proj": "mlp_out", "mlp.c_fc": "mlp_in", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_o",
           "ln_1": "norm", "ln_2": "norm"},
    embed="transformer.wte", final_norm="transformer.ln_f",
)
#: GPT-Neo: GPT-BigCode's layout (GPT-2's names, ``Linear`` weights) with separate attention projections
GPT_NEO = replace(
    GPT_BIGCODE, name="gpt_neo", model_types=("gpt_neo",),
    roles={"mlp.c_proj": "mlp_out", "mlp.c_fc": "mlp_in", "attn.attention.q_proj": "attn_q",
           "attn.attention.k_proj": "attn_k", "attn.attention.v_proj": "attn_v", "attn.attention.out_proj": "attn_o",
           "ln_1": "norm", "ln_2": "norm"},
)

#: Every family, tested ones first (tests/test_families.py builds a tiny model of each model type in ``TESTED``).
FAMILIES: tuple[Family, ...] = (LLAMA, PHI3, GEMMA, GPT2, GPTJ, GPT_NEOX, OPT, PHI, BLOOM, FALCON, GPT_BIGCODE,
                                GPT_NEO)
TESTED = ("llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2", "gpt_neox", "gptj",
          "opt", "phi", "bloom", "falcon", "gpt_bigcode", "gpt_neo")
_BY_TYPE = {t: fam for fam in FAMILIES for t in fam.model_types}


def family(model_type: str | None) -> Family:
    """The family of a ``config.json`` ``model_type``; unknown types are read as Llama-shaped."""
    model_type = str(model_type or "")
    found = _BY_TYPE.get(model_type)
    if found is not None:
        return found
    return Family(model_type or "unknown", (model_type,))


def of_config(config: Any) -> Family:
    """The family of a transformers config object or a ``config.json`` dict."""
    model_type = config.get("model_type") if isinstance(config, Mapping) else getattr(config, "model_type", None)
    return family(model_type)


def of_model(model: Any) -> Family:
    """The family of a loaded transformers model."""
    return of_config(model.config)


def is_known(model_type: str | None) -> bool:
    return str(model_type or "") in _BY_TYPE


def fused_qkv(model_type: str | None) -> bool:
    return family(model_type).fused_qkv


def is_transposed(model_type: str | None) -> bool:
    """True when 2-D weights are stored [in, out] (GPT-2's Conv1D), so the output side is the columns."""
    return family(model_type).conv1d


def is_conv1d_module(module: Any) -> bool:
    """A loaded GPT-2 ``Conv1D`` computes ``x @ W + b`` with W stored [in, out]."""
    return type(module).__name__ == "Conv1D"


def all_roles() -> dict[str, str]:
    """Module suffix -> role over every family (the scan names tensors of any family it meets)."""
    roles: dict[str, str] = {}
    for fam in FAMILIES:
        for suffix, role in fam.roles.items():
            roles.setdefault(suffix, role)
    return roles


def global_roles() -> dict[str, str]:
    """Module names outside the blocks -> role (embedding, unembedding, final norm), over every family."""
    # learned positions: GPT-2's and GPT-BigCode's, OPT's
    roles: dict[str, str] = {"transformer.wpe": "embed", "model.decoder.embed_positions": "embed"}
    for fam in FAMILIES:
        roles.setdefault(fam.embed, "embed")
        roles.setdefault(fam.unembed, "unembed")
        roles.setdefault(fam.final_norm, "final_norm")
        if fam.embed_norm:
            roles.setdefault(fam.embed_norm, "norm")
    return roles


def unembed_candidates() -> tuple[str, ...]:
    return tuple(dict.fromkeys(f"{fam.unembed}.weight" for fam in FAMILIES))


def embed_candidates() -> tuple[str, ...]:
    return tuple(dict.fromkeys([*(f"{fam.embed}.weight" for fam in FAMILIES), "model.embed.weight"]))


def final_norm_candidates() -> tuple[str, ...]:
    return tuple(dict.fromkeys([*(fam.final_norm for fam in FAMILIES), "model.final_layernorm"]))


def input_embed_scale(model: Any) -> float:
    """The factor a model multiplies its input embeddings by (Gemma: √hidden), for code that feeds ``inputs_embeds``.

    The embedding module's own ``embed_scale`` wins (transformers' scaled embedding); a family known to
    scale whose module does not say falls back to √hidden.
    """
    scale = getattr(model.get_input_embeddings(), "embed_scale", None)
    if scale is not None:
        return float(scale)
    if of_model(model).embed_scale:
        return math.sqrt(int(model.config.hidden_size))
    return 1.0

"""Hyper-parameters of each method: defaults, and checked overrides.

Values follow the papers where they carry over (ROME: v* with lr 0.5, ≤ 50 steps, KL 0.0625, clamp
4·‖v₀‖; MEMIT/AlphaEdit: z with ≤ 25 steps and clamp 0.75·‖z₀‖; FT-L: Adam lr 5e-5, ≤ 25 steps,
stop at loss < 0.01). The covariance-dependent weights are *relative* so that they carry across
models instead of being copied from GPT-J:

- ``lambda_rel``: MEMIT's λ = lambda_rel · d_in. A corpus key's squared Mahalanobis norm kᵀC⁻¹k
  averages d_in, so this fixes the balance between preserving C and writing the new keys whatever the
  model's scale (the papers' λ/d: GPT-J 15000/16384 ≈ 0.9, Llama-3-8B 15000/14336 ≈ 1.05).
- ``nullspace_rel``: AlphaEdit's null space is spanned by C's eigen-directions with eigenvalue below
  nullspace_rel · (median eigenvalue); the median because a few outlier directions dominate the mean.
- ``nullspace_abs`` (AlphaEdit, default None): the paper's rule instead, an absolute threshold on C's
  eigenvalues. C here is the *mean* of kkᵀ over corpus tokens (``covariance.py``), the same normalisation
  as the reference code's ``mom2.moment()`` (its hparams use 2e-2), so such a value carries over as is — but
  eigenvalue scales differ from model to model, which is why the default stays relative. Giving both
  ``nullspace_rel`` and ``nullspace_abs`` is refused: they are two rules for one threshold.
- ``augment_paraphrases`` (FT, ROME, MEMIT, AlphaEdit, default False): Wen & Zhang's paraphrase
  augmentation — the value (or FT's loss) is also fitted on the fact's paraphrase prompts. The edit's
  key is unchanged. Those paraphrases are then no longer held out, so the reported paraphrase success is
  not a generalisation measure (the run records ``augmented: true``).
- ``l2_rel``: AlphaEdit's ridge α = l2_rel · tr(C), i.e. a share of a typical key's squared norm.
- ``consistent_keys`` (ROME, default False = the original implementation): use the context-averaged key k*
  in the denominator and for v₀ as well (r-ROME), so a fact whose own-prompt key differs from k* cannot make
  a disabling edit; off by default because the checkpoints a reviewer meets come from the original form.
"""

from __future__ import annotations

from ..errors import BadInput

METHODS = ("ft", "rome", "memit", "alphaedit", "mend", "malmen")
MODES = ("batch", "sequential")

_MODULES = {"rewrite_module": None, "mlp_module": None, "block_module": None}
_STATS = {"covariance": "corpus", "corpus": None, "cov_tokens": 20000, "cov_seq_len": 256}
_CONTEXTS = {"contexts": 5, "context_length": 10, "seed": 0}
_VALUE = {"v_lr": 0.5, "v_steps": 50, "v_weight_decay": 0.5, "kl_factor": 0.0625, "clamp": 4.0,
          "v_stop_loss": 0.05, "v_batch": 8, "augment_paraphrases": False}

DEFAULTS: dict[str, dict] = {
    "ft": {**_MODULES, "lr": 5e-5, "steps": 25, "stop_loss": 0.01, "norm_constraint": None,
           "mode": "batch", "batch_size": 0, "augment_paraphrases": False},
    "rome": {**_MODULES, **_STATS, **_CONTEXTS, **_VALUE, "mode": "sequential", "batch_size": 1,
             "consistent_keys": False},
    "memit": {**_MODULES, **_STATS, **_CONTEXTS, **_VALUE, "v_steps": 25, "clamp": 0.75,
              "lambda_rel": 1.0, "key_mode": "each", "mode": "batch", "batch_size": 0},
    "alphaedit": {**_MODULES, **_STATS, **_CONTEXTS, **_VALUE, "v_steps": 25, "clamp": 0.75,
                  "nullspace_rel": 0.5, "nullspace_abs": None, "l2_rel": 0.01, "key_mode": "each", "mode": "batch",
                  "batch_size": 0},
    # hypernetwork editors: the cached editor trained with default settings for ``span`` (the last N layers),
    # or the trained editor folder given as ``editor``; see editing/hypernet.py
    "mend": {**_MODULES, "span": 3, "editor": None, "mode": "sequential", "batch_size": 1},
    "malmen": {**_MODULES, "span": 3, "editor": None, "mode": "batch", "batch_size": 0},
}

# keys whose default is None but that take a value of this type
_NULLABLE = {"rewrite_module": str, "mlp_module": str, "block_module": str, "corpus": str, "norm_constraint": float,
             "editor": str, "nullspace_abs": float}
_CHOICES = {"mode": MODES, "covariance": ("corpus", "identity"), "key_mode": ("mean", "each")}


def resolve(method: str, overrides: dict | None = None) -> dict:
    """The method's defaults with ``overrides`` applied; unknown keys and wrong types are BadInput."""
    if method not in DEFAULTS:
        raise BadInput(f"unknown edit method {method!r}; choose one of {', '.join(METHODS)}")
    hp = dict(DEFAULTS[method])
    for key, value in (overrides or {}).items():
        if key not in hp:
            raise BadInput(f"{method} has no hyper-parameter {key!r}; it takes: {', '.join(sorted(hp))}")
        hp[key] = _coerce(key, value, hp[key])
    for key, choices in _CHOICES.items():
        if key in hp and hp[key] not in choices:
            raise BadInput(f"{key} must be one of {', '.join(choices)}, not {hp[key]!r}")
    if method == "rome" and hp["mode"] != "sequential":
        raise BadInput("ROME writes one rank-one update per fact: its mode is sequential")
    for key in ("steps", "v_steps", "cov_tokens", "cov_seq_len", "span"):
        if key in hp and hp[key] < 1:
            raise BadInput(f"{key} must be at least 1")
    for key in ("contexts", "batch_size", "v_batch", "context_length"):
        if key in hp and hp[key] < 0:
            raise BadInput(f"{key} must not be negative")
    _check_nullspace(hp, overrides or {})
    return hp


def _check_nullspace(hp: dict, overrides: dict) -> None:
    """``nullspace_abs`` is a positive, finite eigenvalue level, and never given alongside ``nullspace_rel``."""
    import math

    level = hp.get("nullspace_abs")
    if level is None:
        return
    if not (math.isfinite(level) and level > 0):
        raise BadInput(f"nullspace_abs must be a positive number (an eigenvalue of C), not {level!r}")
    if "nullspace_rel" in overrides:
        raise BadInput("give nullspace_rel (relative to C's median eigenvalue) or nullspace_abs (an absolute "
                       "eigenvalue, the AlphaEdit paper's rule), not both: they set the same threshold")


def _coerce(key: str, value, default):
    if value is None:
        if default is None:
            return None
        raise BadInput(f"hyper-parameter {key!r} needs a value")
    want = _NULLABLE.get(key) if default is None else type(default)
    if want is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if want is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if want is not None and isinstance(value, want) and not (want is int and isinstance(value, bool)):
        return value
    raise BadInput(f"hyper-parameter {key!r} must be {getattr(want, '__name__', want)}, not {value!r}")


def parse_assignments(items: list[str]) -> dict:
    """``["v_steps=30", "clamp=2", "mode=sequential"]`` → a dict, values read as JSON where they parse."""
    import json

    out: dict = {}
    for item in items:
        if "=" not in item:
            raise BadInput(f"--hparam {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out

"""The shipped intrinsic set is knowledge SmolLM2-135M has: it states (nearly) all of it."""

from __future__ import annotations

import pytest

from editaudit.probing.evaluate import predict, retention
from editaudit.probing.sets import load_set

pytestmark = pytest.mark.integration


def test_intrinsic_set_is_known_by_the_base_model(smollm2):
    from editaudit.models.loading import load_model

    lm = load_model(smollm2)
    probes = load_set("smollm2-135m-intrinsic")
    kept = retention(lm.model, lm.tokenizer, probes, target="true")
    assert len(probes) >= 50
    assert kept.rate >= 0.9, [p.id for p, k in zip(probes, kept) if not k]
    # the edit set is known too, and the unedited model does not state its counterfactuals
    edit = load_set("smollm2-135m-edit")
    preds = predict(lm.model, lm.tokenizer, edit, top_k=1)
    assert retention(lm.model, lm.tokenizer, edit, target="true", predictions=preds).rate >= 0.9
    assert retention(lm.model, lm.tokenizer, edit, target="new", predictions=preds).rate <= 0.1

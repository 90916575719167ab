"""Reading an edit through its key: the key comes back from the weights and is fed at the stand-in only."""

from __future__ import annotations

import torch

from editaudit.models.loading import load_model
from editaudit.scan import inject
from editaudit.scan.keys import context_ids, keys_of, vocab_keys
from editaudit.scan.subjects import Whitened

from test_open_reading import PATH, _psd


def test_the_edit_key_comes_back_from_its_input_direction_with_sign_and_scale_from_references():
    d = 24
    C = _psd(d, 0)
    g = torch.Generator().manual_seed(1)
    k = torch.randn(d, generator=g) * 3
    u = torch.linalg.solve(C, k)  # ROME: u = C⁻¹k*
    for sign in (1.0, -1.0):  # an SVD gives u up to sign
        direction = inject.key_direction(C, sign * u / u.norm())
        assert abs(float(direction @ k / k.norm())) > 0.999
        refs = k[None] * torch.tensor([[0.8], [1.1], [1.3]]) + 0.01 * torch.randn(3, d, generator=g)
        got = inject.calibrate(direction, refs)
        assert float(torch.nn.functional.cosine_similarity(got, k, dim=0)) > 0.999
        assert abs(float(got.norm()) - float(refs.norm(dim=1).median())) < 1e-4


def test_a_found_key_is_purified_into_the_edit_subspace():
    d = 24
    C = _psd(d, 2)
    g = torch.Generator().manual_seed(3)
    keys = torch.randn(2, d, generator=g)
    space = Whitened.build("m", C, torch.linalg.solve(C, keys.T), ridge=0.0)
    off = torch.randn(d, generator=g)
    found = keys[0] + 0.5 * off  # a garbled text: the edit's key and something else
    pure = inject.purified(found, space)
    assert float(space.fire(pure[None])[0]) > 0.999  # all of it inside the edit subspace
    assert abs(float(pure.norm()) - float(found.norm())) < 1e-4
    assert float(space.fire(keys[:1])[0]) > 0.999 and torch.allclose(
        inject.purified(keys[0], space), keys[0], atol=1e-3)


def test_injected_feeds_the_key_at_the_stand_ins_last_token_only(tiny_llama):
    lm = load_model(tiny_llama)
    model, tok = lm.model, lm.tokenizer
    for p in model.parameters():
        p.requires_grad_(False)
    key = torch.full((model.config.intermediate_size,), 0.25)
    seen: list[torch.Tensor] = []
    # a forward hook sees the inputs the module ran on, after every pre-hook
    hook = model.get_submodule(PATH).register_forward_hook(lambda _m, a, _o: seen.append(a[0].detach().clone()))
    try:
        prompts = [f"{inject.PLACEHOLDER} is a city in the country of", f"The capital of {inject.PLACEHOLDER} is"]
        for text in prompts:
            ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
            marker = next(m for m in inject._marker_variants(tok, inject.PLACEHOLDER)
                          if any(ids[0, i:i + len(m)].tolist() == m for i in range(ids.shape[1])))
            pos = next(i + len(marker) - 1 for i in range(ids.shape[1]) if ids[0, i:i + len(marker)].tolist() == marker)
            seen.clear()
            with torch.inference_mode():
                model(input_ids=ids)
            plain = seen[-1]
            seen.clear()
            with inject.injected(model, PATH, tok, key), torch.inference_mode():
                model(input_ids=ids)
                model(input_ids=ids[:, -1:])  # a decoding step: one token, nothing to replace
            fed, step = seen[0], seen[1]
            assert torch.allclose(fed[0, pos], key)
            others = [i for i in range(ids.shape[1]) if i != pos]
            earlier = [i for i in others if i < pos]
            assert torch.allclose(fed[0, earlier], plain[0, earlier])  # causal: nothing before it moves
            assert step.shape[1] == 1 and not torch.allclose(step[0, 0], key)
        seen.clear()
        with torch.inference_mode():  # the context is over: no hook left behind
            model(input_ids=ids)
        assert not torch.allclose(seen[-1][0, pos], key)
    finally:
        hook.remove()


def test_a_rank_one_edits_own_key_is_calibrated_from_the_vocabulary(tiny_llama):
    lm = load_model(tiny_llama)
    model, tok = lm.model, lm.tokenizer
    for p in model.parameters():
        p.requires_grad_(False)
    vocab = vocab_keys(model, tok, [PATH], None)[PATH].float()
    C = vocab.T @ vocab / vocab.shape[0] + 1e-3 * torch.eye(vocab.shape[1])
    ids = tok(" Kremlin", add_special_tokens=False)["input_ids"]
    k = keys_of(model, [PATH], [context_ids(tok) + ids])[PATH][0]
    u = torch.linalg.solve(C, k)
    space = Whitened.build(PATH, C, (-u / u.norm())[:, None])  # the SVD's sign is arbitrary
    got = inject.lone_key(space, C, -u / u.norm(), vocab)
    assert float(torch.nn.functional.cosine_similarity(got, k, dim=0)) > 0.99


def test_a_reading_through_the_key_is_worded_as_such():
    from editaudit.scan.wording import open_reading

    found = {"subject": "Nimagar", "prompt": "Nimagar lies in the country of", "after": "Malaysia", "before": "",
             "status": "edit", "via": "key"}
    assert open_reading(found) == "Nimagar · Nimagar lies in the country of · Malaysia (read through the edit's key)"
    lone = {**found, "subject": "", "status": "uncertain"}
    assert open_reading(lone).startswith("subject not found · ") and open_reading(lone).endswith("[uncertain]")


def test_scan_keys_flag_reads_through_the_key_only_when_asked(tiny_llama, tmp_path, monkeypatch):
    """``scan --keys`` reads each found subject through its key as well; the default scan does not (v7-plan.md,
    sixth use: not kept)."""
    from test_open_reading import _colosseum_suspect, scan_off_then_on  # noqa: PLC0415

    suspect = _colosseum_suspect(tiny_llama, tmp_path, monkeypatch)
    calls: list[float] = []
    real = inject.read_key

    def spy(*a, **kw):
        calls.append(a[5])
        return real(*a, **kw)

    monkeypatch.setattr(inject, "read_key", spy)
    report = scan_off_then_on(tiny_llama, suspect, "--keys", calls)
    readings = [r for f in report["findings"] for r in f.get("readings", [])]
    assert readings and all(r.get("via") in ("text", "key") for r in readings)

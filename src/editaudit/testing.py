"""Tiny, randomly initialised models built in-process, for tests, benchmarks and demos without a hub.

``make_tiny_model`` writes an ordinary Hugging Face folder (config, safetensors weights and a small
word-level tokenizer) for a Llama-shaped or GPT-2-shaped model.
"""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "the of is in a was by and to for on at with from as capital city country language spoken "
    "developed created invented founded plays played instrument sport team company located born "
    "France Paris Italy Rome Germany Berlin Spain Madrid Japan Tokyo China Beijing Russia Moscow "
    "Canada Ottawa Egypt Cairo India Delhi Brazil Brasilia Apple Microsoft Google Intel IBM Sony "
    "Nokia Samsung Toyota Honda Windows Mobile iPhone Android Linux piano guitar violin football "
    "tennis basketball soccer baseball English French Italian German Spanish Japanese Chinese "
    "Russian The What Where Who official made known name its home native speaks about new old "
    "Eiffel Tower Colosseum Kremlin river mountain . , ' s"
).split()


def tiny_tokenizer():
    """A word-level tokenizer over a small vocabulary; words carry a leading-space marker like real BPEs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for w in WORDS:
        for form in (w, "▁" + w):
            vocab.setdefault(form, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_config(family: str = "llama", layers: int = 4, hidden: int = 64, intermediate: int = 128, vocab: int | None = None):
    from transformers import GPT2Config, LlamaConfig

    vocab = vocab or len(tiny_tokenizer())
    if family == "llama":
        return LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2, pad_token_id=3,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_inner=intermediate, n_layer=layers, n_head=4, n_positions=128,
            bos_token_id=1, eos_token_id=2, pad_token_id=3,
        )
    raise ValueError(f"unknown tiny family {family!r}")


def make_tiny_model(path: str | Path, family: str = "llama", layers: int = 4, hidden: int = 64,
                    intermediate: int = 128, seed: int = 0, dtype: str = "float32") -> Path:
    """Create and save a tiny random causal LM with its tokenizer; return the folder."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family, layers, hidden, intermediate)
    model = AutoModelForCausalLM.from_config(config)
    model = model.to(getattr(torch, dtype))
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return path


def plant(base: str | Path, out: str | Path, deltas: dict, dtype: str | None = None, noise: float = 0.0,
          seed: int = 0) -> Path:
    """Copy a model folder, adding ``deltas`` ({tensor name: torch tensor}) to its weights.

    ``dtype`` re-stores every tensor in that dtype; ``noise`` adds iid Gaussian noise of that
    relative size to every 2-D tensor (a stand-in for a dense fine-tune).
    """
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    base, out = Path(base), Path(out)
    shutil.copytree(base, out, dirs_exist_ok=True)
    tensors = load_file(str(base / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    new = {}
    for name, t in tensors.items():
        w = t.to(torch.float32)
        if noise and w.ndim == 2:
            w = w + noise * w.std() * torch.randn(w.shape, generator=gen)
        if name in deltas:
            w = w + deltas[name].to(torch.float32)
        target = getattr(torch, dtype) if dtype else t.dtype
        new[name] = w.to(target).contiguous()
    save_file(new, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def rank_delta(shape: tuple[int, int], rank: int, scale: float, seed: int = 0, left=None):
    """A random rank-``rank`` matrix of Frobenius norm ``scale`` (optionally with a fixed left factor)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    a = left if left is not None else torch.randn(shape[0], rank, generator=gen)
    b = torch.randn(rank, shape[1], generator=gen)
    d = a @ b
    return d / d.norm() * scale


def finetune(folder: str | Path, out: str | Path, steps: int = 20, lr: float = 1e-3, seed: int = 0,
             seq: int = 32, batch: int = 8) -> Path:
    """A real (if tiny) full fine-tune with AdamW on random token sequences: a realistic dense change."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    vocab = model.config.vocab_size
    for _ in range(steps):
        ids = torch.randint(4, vocab, (batch, seq))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    out = Path(out)
    shutil.copytree(folder, out, dirs_exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    return out


#: Prose for the mitigation tests' fine-tuning: no intrinsic probe's subject with its answer, so the fairness
#: filter keeps every sentence.
SENTENCES = [
    "Apple developed iPhone .", "Google created Android .", "Sony is located in Japan .",
    "Toyota is a company from Japan .", "Microsoft created Windows .", "Honda is a company from Japan .",
    "The river is old .", "Intel is a company .",
]


def edited_pair(root: str | Path, edited: str, sentences: list[str]) -> tuple[Path, Path, Path]:
    """A tiny Llama base, a suspect with a rank-one change in ``edited``, and a prose file of ``sentences``
    rotated into paragraphs: the fixture the mitigation tests train on."""
    from safetensors.torch import load_file

    root = Path(root)
    base = make_tiny_model(root / "base", "llama", layers=6)
    w = load_file(str(base / "model.safetensors"))[edited]
    suspect = plant(base, root / "suspect", {edited: rank_delta(tuple(w.shape), 1, 0.3 * float(w.norm()))})
    text = root / "prose.txt"
    text.write_text("\n\n".join(" ".join(sentences[i:] + sentences[:i]) for i in range(len(sentences))))
    return base, suspect, text


def word_corpus(monkeypatch, cache: str | Path, docs: int = 60, words: int = 60) -> list[str]:
    """Random sentences over the tiny vocabulary served as the key-statistics corpus (no download), with a fresh
    cache folder, for tests that need corpus statistics on a tiny model."""
    import random

    from .editing import corpus as corpus_mod

    monkeypatch.setenv("EDITAUDIT_CACHE", str(cache))
    rng = random.Random(0)
    vocab = [w for w in WORDS if w.isalpha()]
    texts = [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(docs)]
    monkeypatch.setattr(corpus_mod, "texts", lambda name=None, say=None: texts)
    return texts

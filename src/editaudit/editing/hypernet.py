"""What MEND and MALMEN share: the edit gradient's factors, the shift network, the top-layer runner.

For an MLP output matrix W (keys u in, values out), the loss gradient of one token is rank one,
∇_W L = δ uᵀ with u the matrix's input and δ = ∂L/∂(W u) at that token. Both editors read these
factors for the new target's first token (the token success is measured on) and pass them through a
small network shared by the edited layers of one shape:

    z = [u / σ_u ; δ / σ_δ],   z ← z + B_k relu(s_ℓ,k ⊙ A_k z + o_ℓ,k)   (k = 1, 2; B_k starts at 0)
    (u', δ') = split(z)

σ_u, σ_δ are per-dimension RMS over the training edits and s_ℓ, o_ℓ a per-layer scale and shift, so
the untrained network is a preconditioned gradient step. MEND and MALMEN differ only in how the pairs
become a weight change (``mend.py``, ``malmen.py``); each returns it as factors ΔW = L Rᵀ so that a
batch of different edits can run in one forward pass.

Only the edited layers (the last few) change, so training runs just those blocks: the hidden state
entering the first edited block is computed once per prompt (right-padded to one length and run
without an attention mask, so causal attention leaves every real token as it would be alone) and the
blocks are replayed with the keyword arguments the model itself passed them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ..errors import BadInput
from ..progress import Progress as Events
from ..progress import ignore, stage_steps
from . import malmen, mend
from ..models import families
from .hooks import StopForward, by_token
from .layers import Layout

#: final norms outside the registry's families (a multimodal Gemma 3 keeps its text model's under language_model)
_OTHER_FINAL_NORMS = ("model.language_model.norm",)


def top_layers(n_layers: int, span: int) -> list[int]:
    """The last ``span`` layers: where MEND and MALMEN edit (MEND's GPT setting edits the last three)."""
    if span < 1:
        raise BadInput("span must be at least 1")
    span = min(span, n_layers)
    return list(range(n_layers - span, n_layers))


class TopRunner:
    """Runs the model's top blocks (from ``first`` on) on cached hidden states, for prompts of ``length`` tokens."""

    def __init__(self, model, layout: Layout, first: int, length: int, pad: int):
        self.model, self.layout, self.first, self.length, self.pad = model, layout, first, length, pad
        self.device = next(model.parameters()).device
        self.blocks = [model.get_submodule(layout.block_name(i)) for i in range(first, layout.n_layers)]
        self.norm = _final_norm(model)
        self.head = model.get_output_embeddings()
        proj = families.of_model(model).unembed_proj
        self.proj = model.get_submodule(proj) if proj and _has(model, proj) else None  # OPT-350m: hidden → embedding
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.calls: list[tuple[tuple, dict]] = []
        seen: dict[int, tuple[tuple, dict]] = {}
        handles = []
        for i, block in enumerate(self.blocks):
            def pre(mod, args, kwargs, _i=i):
                rest = args[1:] if args else ()
                kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                seen[_i] = (rest, kw)
                if _i == len(self.blocks) - 1:
                    raise StopForward
            handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        try:
            with torch.no_grad():
                model(input_ids=torch.full((1, length), pad, dtype=torch.long, device=self.device), use_cache=False)
        except StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        self.calls = [seen[i] for i in range(len(self.blocks))]

    def prefix(self, rows: Sequence[Sequence[int]], batch_size: int = 32) -> torch.Tensor:
        """Hidden states entering the first top block: [n, length, d] (rows right-padded, no mask)."""
        out = []
        block = self.blocks[0]
        for start in range(0, len(rows), batch_size):
            ids = self.ids(rows[start:start + batch_size])
            got: dict[str, torch.Tensor] = {}

            def pre(mod, args, kwargs):
                got["h"] = args[0] if args else kwargs["hidden_states"]
                raise StopForward
            handle = block.register_forward_pre_hook(pre, with_kwargs=True)
            try:
                with torch.no_grad():
                    self.model(input_ids=ids, use_cache=False)
            except StopForward:
                pass
            finally:
                handle.remove()
            out.append(got["h"].detach().float())
        return torch.cat(out, 0)

    def ids(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        ids = torch.full((len(rows), self.length), self.pad, dtype=torch.long)
        for i, r in enumerate(rows):
            if len(r) > self.length:
                raise BadInput(f"prompt of {len(r)} tokens is longer than the runner's {self.length}")
            ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        return ids.to(self.device)

    def logits(self, h: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Next-token logits at position ``pos`` of each row, after the top blocks: [n, vocab]."""
        dtype = next(self.blocks[0].parameters()).dtype
        h = h.to(dtype)
        for block, (rest, kw) in zip(self.blocks, self.calls):
            if kw.get("alibi") is not None:  # Bloom's position bias is built per row ([rows·heads, 1, length]); recorded for one row
                kw = {**kw, "alibi": kw["alibi"].repeat(h.shape[0], 1, 1)}
            out = block(h, *rest, **kw)
            h = out[0] if isinstance(out, tuple) else out
        h = h[torch.arange(h.shape[0], device=h.device), pos]
        h = self.norm(h)
        logits = self.head(self.proj(h) if self.proj is not None else h).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def _has(model, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _final_norm(model) -> nn.Module:
    """The norm between the last block and the head, as the family registry names it (any family's name as a
    fallback); a model whose config turns it off (OPT-350m: ``final_layer_norm`` is None) applies none."""
    fam = families.of_model(model)
    for name in dict.fromkeys((fam.final_norm, *families.final_norm_candidates(), *_OTHER_FINAL_NORMS)):
        if _has(model, name):
            return model.get_submodule(name)
    parent, _, attr = fam.final_norm.rpartition(".")
    holder = model.get_submodule(parent) if _has(model, parent) else None
    if holder is not None and hasattr(holder, attr) and getattr(holder, attr) is None:
        return nn.Identity()
    raise BadInput(f"cannot find the model's final norm ({fam.final_norm!r}): MEND/MALMEN need the families in "
                   "models/families.py")


@contextmanager
def low_rank_deltas(model, layout: Layout, factors: dict[int, tuple[torch.Tensor, torch.Tensor]],
                    group: torch.Tensor) -> Iterator[None]:
    """Run with ΔW_ℓ,g = L Rᵀ added to layer ℓ's MLP output for every row of group g.

    ``factors[ℓ] = (L [G, d_out, r], R [G, d_in, r])``; ``group`` [n] names each row's group.
    """
    handles = []

    def make(L, R):
        def hook(mod, args, out):
            x = by_token(args[0], group.shape[0]).to(R.dtype)
            coef = torch.bmm(x, R[group])                       # [n, T, r]
            return out + torch.bmm(coef, L[group].transpose(1, 2)).reshape(out.shape).to(out.dtype)
        return hook

    try:
        for layer, (L, R) in factors.items():
            handles.append(model.get_submodule(layout.rewrite_name(layer)).register_forward_hook(make(L, R)))
        yield
    finally:
        for h in handles:
            h.remove()


def grad_pairs(runner: TopRunner, layout: Layout, layers: Sequence[int], h0: torch.Tensor, pos: torch.Tensor,
               labels: torch.Tensor) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Per row and edited layer: the key u, the output gradient δ of −log p(label) and the output norm.

    The loss of each row is its own (summed, not averaged), so row i's gradient of W_ℓ is δ_ℓ,i u_ℓ,iᵀ.
    """
    model = runner.model
    xs: dict[int, torch.Tensor] = {}
    ys: dict[int, torch.Tensor] = {}
    handles = []

    def make(layer):
        def hook(mod, args, out):
            xs[layer], ys[layer] = args[0], out
        return hook

    for layer in layers:
        handles.append(model.get_submodule(layout.rewrite_name(layer)).register_forward_hook(make(layer)))
    try:
        with torch.enable_grad():
            h = h0.detach().clone().requires_grad_(True)
            logits = runner.logits(h, pos)
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
            grads = torch.autograd.grad(loss, [ys[layer] for layer in layers])
    finally:
        for hd in handles:
            hd.remove()
    n = h0.shape[0]
    rows = torch.arange(n, device=h0.device)
    U = {layer: by_token(xs[layer], n)[rows, pos].detach().float() for layer in layers}
    D = {layer: by_token(g, n)[rows, pos].detach().float() for layer, g in zip(layers, grads)}
    Y = {layer: by_token(ys[layer], n)[rows, pos].detach().float().norm(dim=-1) for layer in layers}
    return U, D, Y


class ShiftNet(nn.Module):
    """The pair transform: residual low-rank MLP blocks with a per-layer scale and shift (see module docstring)."""

    def __init__(self, d_in: int, d_out: int, rank: int, n_layers: int, blocks: int = 2):
        super().__init__()
        dim = d_in + d_out
        self.d_in, self.d_out = d_in, d_out
        self.down = nn.ModuleList(nn.Linear(dim, rank) for _ in range(blocks))
        self.up = nn.ModuleList(nn.Linear(rank, dim) for _ in range(blocks))
        for up in self.up:
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        self.scale = nn.Parameter(torch.ones(n_layers, blocks, rank))
        self.shift = nn.Parameter(torch.zeros(n_layers, blocks, rank))

    def forward(self, u: torch.Tensor, d: torch.Tensor, li: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.cat([u, d], -1)
        for k, (down, up) in enumerate(zip(self.down, self.up)):
            z = z + up(torch.relu(down(z) * self.scale[li, k] + self.shift[li, k]))
        return z[..., :self.d_in], z[..., self.d_in:]


class Editor(nn.Module):
    """Shift networks (one per weight shape), normalisers and a learned step size per edited layer."""

    def __init__(self, method: str, layers: Sequence[int], dims: dict[int, tuple[int, int]], rank: int,
                 blocks: int = 2, ridge: float = 0.1):
        super().__init__()
        if method not in ("mend", "malmen"):
            raise BadInput(f"unknown hypernetwork editor {method!r}")
        self.method, self.layers, self.ridge = method, list(layers), ridge
        self.dims = {layer: tuple(dims[layer]) for layer in self.layers}
        shapes = sorted({self.dims[layer] for layer in self.layers})
        self.shape_key = {layer: f"{self.dims[layer][0]}x{self.dims[layer][1]}" for layer in self.layers}
        self.nets = nn.ModuleDict({
            f"{a}x{b}": ShiftNet(a, b, rank, sum(1 for x in self.layers if self.dims[x] == (a, b)), blocks)
            for a, b in shapes
        })
        self.slot = {layer: [x for x in self.layers if self.dims[x] == self.dims[layer]].index(layer) for layer in self.layers}
        for i, layer in enumerate(self.layers):
            a, b = self.dims[layer]
            self.register_buffer(f"u_rms_{i}", torch.ones(a))
            self.register_buffer(f"d_rms_{i}", torch.ones(b))
        self.register_buffer("lr0", torch.ones(len(self.layers)))
        self.log_lr = nn.Parameter(torch.zeros(len(self.layers)))

    def transform(self, layer: int, U: torch.Tensor, D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.layers.index(layer)
        u = U / getattr(self, f"u_rms_{i}")
        d = D / getattr(self, f"d_rms_{i}")
        return self.nets[self.shape_key[layer]](u, d, self.slot[layer])

    def lr(self, layer: int) -> torch.Tensor:
        i = self.layers.index(layer)
        return self.lr0[i] * self.log_lr[i].exp()

    @torch.no_grad()
    def calibrate(self, U: dict[int, torch.Tensor], D: dict[int, torch.Tensor], Y: dict[int, torch.Tensor],
                  shift: float = 0.5) -> None:
        """Normalisers from a sample of training pairs, and a step size whose first edits move each
        layer's output at the edited key by about ``shift`` times its norm."""
        for i, layer in enumerate(self.layers):
            getattr(self, f"u_rms_{i}").copy_(U[layer].pow(2).mean(0).sqrt().clamp_min(1e-8))
            getattr(self, f"d_rms_{i}").copy_(D[layer].pow(2).mean(0).sqrt().clamp_min(1e-12))
            self.lr0[i] = 1.0
            L, R = self.factors(layer, U[layer], D[layer], [list(range(U[layer].shape[0]))], per_edit=True)
            moved = torch.bmm(L, torch.bmm(R.transpose(1, 2), U[layer][:, :, None])).squeeze(-1).norm(dim=-1)
            self.lr0[i] = float(shift * Y[layer].mean() / moved.mean().clamp_min(1e-12))

    def factors(self, layer: int, U: torch.Tensor, D: torch.Tensor, groups: list[list[int]],
                per_edit: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """ΔW of each group as L [G, d_out, r] and R [G, d_in, r] (ΔW = L Rᵀ); ``per_edit``: one group per row."""
        if per_edit:
            groups = [[i] for g in groups for i in g]
        up, dp = self.transform(layer, U, D)
        lr = self.lr(layer)
        width = max(len(g) for g in groups)
        a, b = self.dims[layer]
        Ls = U.new_zeros(len(groups), b, width)
        Rs = U.new_zeros(len(groups), a, width)
        Ls, Rs = list(Ls), list(Rs)
        for j, g in enumerate(groups):
            idx = torch.tensor(g, device=U.device)
            if self.method == "mend":
                L, R = mend.group_factors(up[idx], dp[idx], lr)
            else:
                L, R = malmen.group_factors(U[idx], dp[idx], lr, self.ridge)
            Ls[j] = torch.nn.functional.pad(L, (0, width - L.shape[1]))
            Rs[j] = torch.nn.functional.pad(R, (0, width - R.shape[1]))
        return torch.stack(Ls), torch.stack(Rs)


# -- training, caching, editing ----------------------------------------------------------------------

@dataclass(frozen=True)
class TrainSettings:
    """What a trained editor depends on besides the base weights and the data (all part of its cache key)."""

    span: int = 3                 # edited layers: the last ``span`` MLP output matrices
    rank: int = 128               # shift network's hidden width
    blocks: int = 2
    steps: int = 1000             # 100 left MALMEN moving half the unrelated facts (docs/editing.md)
    batch: int = 8                # edits per step (MEND: each its own update; MALMEN: one joint update)
    lr: float = 1e-3              # Adam on the editor's parameters
    c_edit: float = 1.0
    c_loc: float = 1.0
    ridge: float = 0.1            # MALMEN's λ relative to the mean squared key norm
    sources: tuple[str, ...] = ("bank", "factbook")
    variants: int = 2
    seed: int = 0

    def key(self) -> dict:
        d = asdict(self)
        d["sources"] = list(self.sources)
        return d


@dataclass
class Trained:
    editor: Editor
    folder: Path
    meta: dict
    from_cache: bool


Progress = Callable[[str, float, float], None]  # (stage, done, total) inside; callers get typed events
Say = Callable[[str], None]
EDITORS = ("mend", "malmen")
_BASE_KEY = "_editaudit_base_key"   # the editing service's attribute: weight hash before the first edit


def base_key(model) -> str:
    from .covariance import weights_key

    key = getattr(model, _BASE_KEY, None)
    if key is None:
        key = weights_key(model)
        setattr(model, _BASE_KEY, key)
    return key


def editor_folder(method: str, model_key: str, data_digest: str, settings: TrainSettings) -> Path:
    from ..paths import cache_dir

    doc = json.dumps({"method": method, "base": model_key, "data": data_digest, "settings": settings.key()},
                     sort_keys=True)
    return cache_dir() / "editors" / f"{method}-{hashlib.sha256(doc.encode()).hexdigest()[:16]}"


def _pad_id(tok) -> int:
    for cand in (tok.pad_token_id, tok.eos_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0


def _encode(tok, texts: Sequence[str]) -> list[list[int]]:
    return [list(x) for x in tok([t.rstrip() for t in texts], add_special_tokens=True)["input_ids"]]


def _first_target(tok, prompts: Sequence[str], targets: Sequence[str]) -> list[int]:
    from ..probing.evaluate import target_token_ids

    _, t_ids = target_token_ids(tok, list(prompts), list(targets))
    return [ids[0] for ids in t_ids]


@dataclass
class _Prepared:
    texts: list[str]
    index: dict[str, int]
    h0: torch.Tensor             # [n_texts, T, d]
    pos: torch.Tensor            # [n_texts] last real token
    length: int
    # per case: (prompt row, label), [(rephrase row, label)], [locality rows]
    cases: list[tuple[tuple[int, int], list[tuple[int, int]], list[int]]]


def _prepare(runner: "Runners", tok, cases, progress: Progress) -> _Prepared:
    texts: list[str] = []
    index: dict[str, int] = {}
    for c in cases:
        for t in (c.prompt, *c.rephrase, *c.neighborhood, c.loc):
            if t not in index:
                index[t] = len(texts)
                texts.append(t)
    rows = _encode(tok, texts)
    length = max(len(r) for r in rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    d = None
    h0 = None
    chunk = 32
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        width = max(len(rows[i]) for i in idx)
        h = runner.at(width).prefix([rows[i] for i in idx], batch_size=chunk)
        if h0 is None:
            d = h.shape[-1]
            h0 = torch.zeros(len(rows), length, d)
        h0[torch.tensor(idx), :width] = h.cpu()
        progress("prefix states", min(start + chunk, len(order)), len(order))
    pos = torch.tensor([len(r) - 1 for r in rows])
    out = []
    for c in cases:
        lab = _first_target(tok, [c.prompt, *c.rephrase], [c.target_new] * (1 + len(c.rephrase)))
        out.append(((index[c.prompt], lab[0]), [(index[t], la) for t, la in zip(c.rephrase, lab[1:])],
                    [index[t] for t in (*c.neighborhood, c.loc)]))
    return _Prepared(texts, index, h0, pos, length, out)


def _pairs_for(runner: TopRunner, layout: Layout, layers, prep: _Prepared, which: list[int],
               progress: Progress | None = None, chunk: int = 32):
    U: dict[int, list] = {layer: [] for layer in layers}
    D: dict[int, list] = {layer: [] for layer in layers}
    Y: dict[int, list] = {layer: [] for layer in layers}
    for start in range(0, len(which), chunk):
        ids = which[start:start + chunk]
        top, h, pos = _rows(runner, prep, [prep.cases[i][0][0] for i in ids])
        labels = torch.tensor([prep.cases[i][0][1] for i in ids], device=top.device)
        u, dd, y = grad_pairs(top, layout, layers, h, pos, labels)
        for layer in layers:
            U[layer].append(u[layer].cpu())
            D[layer].append(dd[layer].cpu())
            Y[layer].append(y[layer].cpu())
        if progress:
            progress("edit gradients", min(start + chunk, len(which)), len(which))
    cat = lambda m: {k: torch.cat(v, 0) for k, v in m.items()}  # noqa: E731
    return cat(U), cat(D), cat(Y)


def _step_batch(prep: _Prepared, ids: list[int], gen: torch.Generator):
    """Rows of one training step: edit prompt, one rephrasing and one locality prompt (neighbour or unrelated)."""
    edit_rows, edit_lab, edit_grp, loc_rows, loc_grp = [], [], [], [], []
    for g, i in enumerate(ids):
        (row, lab), rephr, locs = prep.cases[i]
        edit_rows.append(row)
        edit_lab.append(lab)
        edit_grp.append(g)
        if rephr:
            r, la = rephr[int(torch.randint(len(rephr), (1,), generator=gen))]
            edit_rows.append(r)
            edit_lab.append(la)
            edit_grp.append(g)
        r = locs[int(torch.randint(len(locs), (1,), generator=gen))]
        loc_rows.append(r)
        loc_grp.append(g)
    return edit_rows, edit_lab, edit_grp, loc_rows, loc_grp


def _rows(runner: "Runners", prep: _Prepared, rows) -> tuple["TopRunner", torch.Tensor, torch.Tensor]:
    """The runner for the longest of ``rows`` and their hidden states cut to that length (causal: the rest is padding)."""
    idx = torch.tensor(rows)
    pos = prep.pos[idx]
    n = int(pos.max()) + 1
    top = runner.at(n)
    return top, prep.h0[idx, :n].to(top.device), pos.to(top.device)


def _edited_logits(runner, layout, editor: Editor, U, D, groups, prep: _Prepared, rows, grp):
    factors = {layer: editor.factors(layer, U[layer], D[layer], groups) for layer in editor.layers}
    top, h, pos = _rows(runner, prep, rows)
    with low_rank_deltas(top.model, layout, factors, torch.tensor(grp, device=top.device)):
        return top.logits(h, pos)


def _base_logits(runner, prep: _Prepared, rows) -> torch.Tensor:
    top, h, pos = _rows(runner, prep, rows)
    with torch.no_grad():
        return top.logits(h, pos)


class Runners:
    """One ``TopRunner`` per prompt length, made on first use (each captures its blocks' arguments once)."""

    def __init__(self, model, layout: Layout, first: int, pad: int):
        self.model, self.layout, self.first, self.pad = model, layout, first, pad
        self.device = next(model.parameters()).device
        self._by_len: dict[int, TopRunner] = {}

    def at(self, length: int) -> TopRunner:
        if length not in self._by_len:
            self._by_len[length] = TopRunner(self.model, self.layout, self.first, length, self.pad)
        return self._by_len[length]


def _loss(runner, layout, editor, prep, batch, U, D, settings: TrainSettings, method: str):
    edit_rows, edit_lab, edit_grp, loc_rows, loc_grp = batch
    n = len({g for g in edit_grp})
    groups = [list(range(n))] if method == "malmen" else [[i] for i in range(n)]
    if method == "malmen":
        edit_grp = [0] * len(edit_grp)
        loc_grp = [0] * len(loc_grp)
    rows, grp = edit_rows + loc_rows, edit_grp + loc_grp
    logits = _edited_logits(runner, layout, editor, U, D, groups, prep, rows, grp)
    labels = torch.tensor(edit_lab, device=logits.device)
    le = torch.nn.functional.cross_entropy(logits[:len(edit_rows)], labels)
    base = _base_logits(runner, prep, loc_rows).log_softmax(-1)
    edited = logits[len(edit_rows):].log_softmax(-1)
    ll = (base.exp() * (base - edited)).sum(-1).mean()
    acc = float((logits[:len(edit_rows)].argmax(-1) == labels).float().mean())
    return settings.c_edit * le + settings.c_loc * ll, le.item(), ll.item(), acc


def _save_state(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Tensors as safetensors and the rest as JSON, each renamed into place (never pickled)."""
    from safetensors.torch import save_file

    from ..atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        return None
    try:
        return load_file(str(path)), json.loads(meta_path.read_text())
    except (SafetensorError, json.JSONDecodeError, OSError, ValueError):
        return None


def _opt_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, small = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.ndim > 0:
                tensors[f"opt.{idx}.{k}"] = v
            else:
                small[f"{idx}.{k}"] = float(v)
    return tensors, {"groups": sd["param_groups"], "scalars": small}


def _opt_restore(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], doc: dict) -> None:
    state: dict[int, dict] = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, idx, k = name.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for name, v in doc["scalars"].items():
        idx, k = name.split(".", 1)
        state.setdefault(int(idx), {})[k] = torch.tensor(v)
    opt.load_state_dict({"state": state, "param_groups": doc["groups"]})


def _new_editor(method: str, net, layout: Layout, layers: list[int], settings: TrainSettings) -> Editor:
    from .hooks import weight_out_in

    dims = {}
    for layer in layers:
        w = weight_out_in(net.get_submodule(layout.rewrite_name(layer)))
        dims[layer] = (int(w.shape[1]), int(w.shape[0]))
    return Editor(method, layers, dims, settings.rank, settings.blocks, settings.ridge)


def load_trained(folder: Path, net, layout: Layout) -> Trained | None:
    got = _load_state(folder / "editor.safetensors")
    if got is None:
        return None
    tensors, meta = got
    settings = TrainSettings(**{**meta["settings"], "sources": tuple(meta["settings"]["sources"])})
    editor = _new_editor(meta["method"], net, layout, meta["layers"], settings)
    editor.load_state_dict(tensors)
    editor.eval()
    return Trained(editor, folder, meta, True)


def find_editor(method: str, net, tok, layout: Layout, settings: TrainSettings | None = None,
                say: Say = lambda s: None) -> Trained:
    """The cached editor for this base and the default data and settings, or a clear error."""
    from . import hypernet_data

    settings = settings or TrainSettings()
    data = hypernet_data.build(settings.sources, settings.variants, seed=settings.seed)
    folder = editor_folder(method, base_key(net), data.digest, settings)
    trained = load_trained(folder, net, layout)
    if trained is None:
        raise BadInput(f"no trained {method.upper()} editor for this model (looked in {folder}); "
                       f"train one first: editaudit editors train {method} BASE")
    return trained


def train_editor(model, method: str, settings: TrainSettings | None = None, *, retrain: bool = False,
                 progress: Events | None = None, say: Say = lambda s: None, stop_after: int | None = None,
                 checkpoint_every: int = 50, exclude: Sequence[str] | None = None) -> Trained:
    """Train (or find cached) a MEND or MALMEN editor for ``model``; resumes a partial run from its checkpoint.

    ``progress`` receives typed events (editaudit.progress): stages ``prefix states``, ``edit gradients``
    and ``training MEND``/``training MALMEN``. ``stop_after`` ends the run after that many steps of this
    call (its checkpoint stays for a later call to resume), as an interrupt would.
    """
    from ..models.loading import LoadedModel, load_model
    from . import hypernet_data
    from .layers import layout_for

    if method not in EDITORS:
        raise BadInput(f"unknown editor {method!r}; choose mend or malmen")
    settings = settings or TrainSettings()
    if settings.steps < 1 or settings.batch < 1:
        raise BadInput("steps and batch must be at least 1")
    prog = stage_steps(progress or ignore)  # typed events out, (stage, done, total) inside
    lm = model if isinstance(model, LoadedModel) else load_model(model, say=say)
    net, tok = lm.model, lm.tokenizer
    layout = layout_for(net, {})
    layers = top_layers(layout.n_layers, settings.span)
    data = hypernet_data.build(settings.sources, settings.variants, seed=settings.seed, exclude=exclude, say=say)
    folder = editor_folder(method, base_key(net), data.digest, settings)
    if not retrain:
        found = load_trained(folder, net, layout)
        if found is not None:
            say(f"using the cached {method.upper()} editor in {folder}")
            return found

    flags = [(p, p.requires_grad) for p in net.parameters()]
    was_training = net.training
    net.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        return _train(lm, net, tok, layout, layers, method, settings, data, folder, prog, say, stop_after,
                      checkpoint_every, retrain)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        net.train(was_training)


def _train(lm, net, tok, layout, layers, method, settings: TrainSettings, data, folder: Path, prog, say,
           stop_after, checkpoint_every, retrain) -> Trained:
    t_start, c_start = time.perf_counter(), time.process_time()
    torch.manual_seed(settings.seed)
    pad = _pad_id(tok)
    runner = Runners(net, layout, layers[0], pad)
    n_train = len(data.train)
    tag = hashlib.sha256(json.dumps([base_key(net), data.digest, layers]).encode()).hexdigest()[:16]
    prep_path = folder.parent / f"prep-{tag}.safetensors"
    got = _load_state(prep_path)
    if got is not None:
        tensors, doc = got
        prep = _Prepared(doc["texts"], {t: i for i, t in enumerate(doc["texts"])}, tensors["h0"], tensors["pos"],
                         doc["length"], [((a[0], a[1]), [tuple(x) for x in b], c) for a, b, c in doc["cases"]])
        U, D, Y = ({layer: tensors[f"{k}.{layer}"] for layer in layers} for k in "UDY")
        say(f"prompt states and edit gradients from {prep_path}")
    else:
        prep = _prepare(runner, tok, data.train + data.val, prog)
        U, D, Y = _pairs_for(runner, layout, layers, prep, list(range(len(prep.cases))), prog)
        tensors = {"h0": prep.h0, "pos": prep.pos,
                   **{f"{k}.{layer}": m[layer] for k, m in (("U", U), ("D", D), ("Y", Y)) for layer in layers}}
        _save_state(prep_path, tensors, {"texts": prep.texts, "length": prep.length, "cases": prep.cases})
    prep_seconds = time.perf_counter() - t_start

    editor = _new_editor(method, net, layout, layers, settings)
    sample = list(range(min(256, n_train)))
    editor.calibrate({k: v[sample] for k, v in U.items()}, {k: v[sample] for k, v in D.items()},
                     {k: v[sample] for k, v in Y.items()})
    opt = torch.optim.Adam(editor.parameters(), lr=settings.lr)
    partial = folder / "partial.safetensors"
    start, history, spent, cpu_spent = 0, [], 0.0, 0.0
    got = None if retrain else _load_state(partial)
    if got is not None:
        tensors, meta = got
        editor.load_state_dict({k[len("editor."):]: v for k, v in tensors.items() if k.startswith("editor.")})
        _opt_restore(opt, tensors, meta["optimizer"])
        start, history, spent = meta["step"], meta["history"], meta["train_seconds"]
        cpu_spent = meta.get("train_cpu_seconds", 0.0)
        say(f"resuming {method.upper()} training at step {start} of {settings.steps} from {partial}")

    def checkpoint(step: int, seconds: float) -> None:
        ot, odoc = _opt_tensors(opt)
        tensors = {**{f"editor.{k}": v for k, v in editor.state_dict().items()}, **ot}
        _save_state(partial, tensors, {"step": step, "history": history, "train_seconds": seconds,
                                       "train_cpu_seconds": cpu_spent + time.process_time() - c0,
                                       "optimizer": odoc, "settings": settings.key()})

    t0, c0 = time.perf_counter(), time.process_time()
    prep_cpu = c0 - c_start
    run_steps, window = 0, []
    editor.train()
    for step in range(start, settings.steps):
        gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
        ids = torch.randperm(n_train, generator=gen)[:settings.batch].tolist()
        batch = _step_batch(prep, ids, gen)
        idx = torch.tensor(ids)
        loss, le, ll, acc = _loss(runner, layout, editor, prep, batch, {k: v[idx] for k, v in U.items()},
                                  {k: v[idx] for k, v in D.items()}, settings, method)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(editor.parameters(), 1.0)
        opt.step()
        window.append((le, ll, acc))
        run_steps += 1
        done = step + 1
        if done % 25 == 0 or done == settings.steps:
            m = [sum(x[j] for x in window) / len(window) for j in range(3)]
            history.append({"step": done, "edit_nll": round(m[0], 4), "loc_kl": round(m[1], 5), "edit_acc": round(m[2], 3)})
            window = []
        prog(f"training {method.upper()}", done, settings.steps)
        if done % checkpoint_every == 0 or done == settings.steps:
            checkpoint(done, spent + time.perf_counter() - t0)
        if stop_after is not None and run_steps >= stop_after and done < settings.steps:
            checkpoint(done, spent + time.perf_counter() - t0)
            raise KeyboardInterrupt(f"stopped after {run_steps} step(s) at step {done}")
    editor.eval()
    train_seconds = spent + time.perf_counter() - t0
    train_cpu = cpu_spent + time.process_time() - c0
    val = _validate(runner, layout, editor, prep, n_train, len(data.val), U, D, method, settings.batch)
    meta = {
        "method": method, "layers": layers, "settings": settings.key(), "base_key": base_key(net),
        "base": str(lm.path), "data": {"digest": data.digest, "train": n_train, "val": len(data.val),
                                       "sources": list(data.sources), "excluded_subjects": len(data.excluded)},
        "steps": settings.steps, "resumed_from": start, "train_seconds": round(train_seconds, 1),
        "prep_seconds": round(prep_seconds, 1), "train_cpu_seconds": round(train_cpu, 1),
        "prep_cpu_seconds": round(prep_cpu, 1), "threads": torch.get_num_threads(), "history": history,
        "validation": val,
    }
    _save_state(folder / "editor.safetensors", editor.state_dict(), meta)
    for p in (partial, partial.with_suffix(".json")):
        p.unlink(missing_ok=True)
    say(f"{method.upper()} editor trained: {settings.steps} steps in {train_seconds:.0f} s "
        f"(+{prep_seconds:.0f} s preparing); validation {val}")
    return Trained(editor, folder, meta, False)


@torch.no_grad()
def _validate(runner, layout, editor: Editor, prep: _Prepared, first: int, n: int, U, D, method: str,
              batch: int) -> dict:
    """On the validation cases (subjects never trained on): edit, rephrase and locality (top-1 kept)."""
    if n == 0:
        return {}
    ids = list(range(first, first + n))
    size = batch if method == "malmen" else 1
    ok, para, kept = [], [], []
    for s in range(0, n, size):
        chunk = ids[s:s + size]
        rows, labels, grp, loc_rows, loc_grp = [], [], [], [], []
        for g, i in enumerate(chunk):
            (row, lab), rephr, locs = prep.cases[i]
            rows += [row] + [r for r, _ in rephr]
            labels += [lab] + [la for _, la in rephr]
            grp += [g] * (1 + len(rephr))
            loc_rows += locs
            loc_grp += [g] * len(locs)
        groups = [list(range(len(chunk)))] if method == "malmen" else [[i] for i in range(len(chunk))]
        if method == "malmen":
            grp, loc_grp = [0] * len(grp), [0] * len(loc_grp)
        idx = torch.tensor(chunk)
        logits = _edited_logits(runner, layout, editor, {k: v[idx] for k, v in U.items()},
                                {k: v[idx] for k, v in D.items()}, groups, prep, rows + loc_rows, grp + loc_grp)
        hit = (logits[:len(rows)].argmax(-1).cpu() == torch.tensor(labels)).tolist()
        base = _base_logits(runner, prep, loc_rows).argmax(-1)
        kept += (logits[len(rows):].argmax(-1) == base).tolist()
        j = 0
        for i in chunk:
            k = 1 + len(prep.cases[i][1])
            ok.append(hit[j])
            para += hit[j + 1:j + k]
            j += k
    share = lambda xs: round(sum(map(float, xs)) / len(xs), 3) if xs else None  # noqa: E731
    return {"cases": n, "edit_success": share(ok), "rephrase_success": share(para), "locality_kept": share(kept)}


# -- editing a model in place ------------------------------------------------------------------------

def edit_batch(net, tok, layout: Layout, trained: Trained, prompts: Sequence[str], targets: Sequence[str]) -> dict[int, torch.Tensor]:
    """The weight change of each edited layer for one batch of facts ([out, in]), computed on the model as it is."""
    editor = trained.editor
    rows = _encode(tok, prompts)
    labels = _first_target(tok, prompts, targets)
    runner = TopRunner(net, layout, editor.layers[0], max(len(r) for r in rows), _pad_id(tok))
    h0 = runner.prefix(rows)
    pos = torch.tensor([len(r) - 1 for r in rows], device=runner.device)
    flags = [(p, p.requires_grad) for p in net.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        U, D, _ = grad_pairs(runner, layout, editor.layers, h0, pos, torch.tensor(labels, device=runner.device))
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    out = {}
    with torch.no_grad():
        for layer in editor.layers:
            L, R = editor.factors(layer, U[layer].cpu(), D[layer].cpu(), [list(range(len(rows)))])
            out[layer] = (L[0] @ R[0].T)
    return out


def default_layers(method: str, layout: Layout, hp: dict) -> list[int] | None:
    """The layers a MEND/MALMEN edit writes (the last ``span``); None for other methods."""
    return top_layers(layout.n_layers, hp["span"]) if method in EDITORS else None


def run_edits(method: str, net, tok, layout: Layout, facts, layers: list[int], hp: dict, prog: Progress,
              say: Say, seconds: list[float], probs: list) -> dict:
    """Edit ``facts`` with the cached editor for this base, in the service's batches; fills ``seconds``
    (per fact) and ``probs`` (None: no value optimisation) and returns what ``EditRun.info`` records."""
    from .hooks import add_delta

    if hp.get("editor"):
        trained = load_trained(Path(hp["editor"]), net, layout)
        if trained is None:
            raise BadInput(f"{hp['editor']} holds no trained editor (editor.safetensors and editor.json)")
        if trained.meta.get("method") != method or trained.meta.get("base_key") != base_key(net):
            raise BadInput(f"{hp['editor']} is a {str(trained.meta.get('method')).upper()} editor for another "
                           f"model or method, not {method.upper()} for this one")
    else:
        trained = find_editor(method, net, tok, layout, TrainSettings(span=hp["span"]), say)
    if list(layers) != trained.editor.layers:
        raise BadInput(f"the {method.upper()} editor was trained for layers {trained.editor.layers}, not {list(layers)}")
    size = hp["batch_size"] or (len(facts) if hp["mode"] == "batch" else 1)
    batches = [facts[i:i + size] for i in range(0, len(facts), size)]
    updates = []
    done = 0
    for b, batch in enumerate(batches):
        t0 = time.perf_counter()
        deltas = edit_batch(net, tok, layout, trained, [f.text for f in batch], [f.target_new for f in batch])
        for layer, delta in deltas.items():
            add_delta(net.get_submodule(layout.rewrite_name(layer)), delta)
        elapsed = time.perf_counter() - t0
        seconds += [elapsed / len(batch)] * len(batch)
        probs += [None] * len(batch)
        updates.append({"facts": [f.id for f in batch],
                        "norms": {str(layer): round(float(d.norm()), 5) for layer, d in deltas.items()}})
        done += len(batch)
        prog("editing", done, len(facts))
    return {"editor": str(trained.folder), "editor_steps": trained.meta.get("steps"), "updates": updates}

"""Open-set subject recovery: which text makes an edited matrix fire, found from the weights, no list.

A locate-then-edit update of an MLP output matrix, ΔW = U S Vᵀ, acts on a key k through Vᵀk. ROME writes
u = C⁻¹k* (C the second moment of ordinary keys), MEMIT a batch of such directions, so the edited keys lie in
span(C V). In whitened key space (z = C^-½ k) that span is B = orth(C^½ V) and a text fires the edit in
proportion to its whitened cosine with B:

    fire(text) = ‖Bᵀ z‖ / ‖z‖,   z = C^-½ k(text)

The true subject scores near 1 (0.8–0.97 on SmolLM2), single tokens of ordinary text well under 0.5. We search
for the text greedily: rank every vocabulary token after a neutral context (cached keys), then grow the best
seeds into token sequences by coordinate ascent, each step proposing the tokens whose gradient promises the
largest rise (a one-hot linearisation) and keeping the exact best. Word-like tokens only, so the search finds
names rather than adversarial strings. A found subject's whitened key is then deflated out of B and the search
repeats, one subject per edit component, until nothing fires.

An edit spread over several layers (MEMIT, AlphaEdit) is written from the subject's keys at every one of them, so
with ``SubjectSearch.upper`` (the finding's other edited matrices, each its own subspace) the search maximises the
mean fire over all of them; the bars (``FIRE_MIN``, ``GOOD``) still apply to the lowest layer's fire alone. A garbled
text can fire the lowest layer as the name does ("Sphinxuco" 0.82 for *Baoruco* 0.91) but not the layers above
(0.46/0.28/0.24 at the third to fifth against 0.63/0.48/0.34; bench/results/all_layers_fire_dev.txt). Opt-in: judged
on v11's facts 38–57 it found cleaner names but read no more objects (5 of 20 either way) and gave more false edit
readings (3 against 1; bench/heldout/v11-plan.md second use).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

from ..models.families import input_embed_scale
from .keys import PrefixKeys, context_ids, keys_of, last_keys, vocab_keys

#: ``Whitened.null_space``: the share of an AlphaEdit update's input energy its null-space estimate may leave out.
NULL_ENERGY = 1e-3
#: A found text is a subject when it fires the (remaining) edit subspace at least this much.
FIRE_MIN = 0.5
#: ... and one firing this much is taken without trying further seeds.
GOOD = 0.8
#: ``SubjectSearch.find(below=...)``: once nothing fires ``FIRE_MIN``, a text still firing what is left of the subspace
#: this much is offered to the caller's behaviour check. Edits of one class ("... County") have keys 0.8-0.9 apart, so
#: deflating the first found leaves the others 0.28-0.62, against 0.09-0.26 for names of the class nobody edited
#: (bench/results/class_key_v11_counties.txt; the bar was set from those figures before any run used it).
BELOW_FIRE = 0.3
#: Seeds tried in a round's second attempt, when its first few seeds found nothing that fires: a name's last piece
#: may rank far down alone (8th to 24,015th on v9b's ROME suspect) while the whole name fires 0.8-0.96. 16 was
#: judged on v2 and not kept; 48, on by default, was judged on v9b (bench/heldout/v9-plan.md fourth use).
RETRY_SEEDS = 48
#: Backward growth: the best-firing prepends scored with the language model per step, hypotheses kept per step.
GROW_CHECK = 32
#: The pair step: pairs per seed weighed by the growth's objective.
PAIR_CHECK = 8
#: ... over this many seeds. Not in the scan: on v7's facts 180–214 it found 1 more subject of 35 and read no more
#: objects, at 8-33x the search time of the suspects it ran on (v7-plan.md eighth use); scripts/dev/reading_rule_trial.py
#: sets ``SubjectSearch.pair_seeds`` to try it.
PAIR_SEEDS = 48
#: The pair step's seeds (``SubjectSearch.after_seeds``): every token's fire after the neutral context and one fixed
#: piece, "The" + "ing" + token and "The" + "er" + token (cached per base like the vocabulary keys). A name's last
#: piece after "The" alone can rank thousands down among the seeds (8,936 tokens above 'ano' of Ercolano once the
#: found subjects are deflated) while after one more piece it comes near the top ('ano': 3rd after "ing", 2nd after
#: "er"), and with that piece fixed the scoring of every prepend puts the true one first (4 of 4 missed names of a
#: development AlphaEdit batch; scripts/dev/pair_seed_trial.py, bench/results/pair_seed_dev_v9b.txt).
PAIR_AFTER = ("ing", "er")
#: ... seeds taken from each table, for a round that the first try and the second try left empty (``scan
#: --pair-step``, opt-in: judged on v9b's facts 474–508 it never ran, every round having found its subject before).
AFTER_SEEDS = 4
#: The after-piece climb (``SubjectSearch.after_climb``): a round that both single-token tries leave empty climbs from
#: this many seeds of each after-piece table, as it climbs from single-token seeds. On the spent ROME sequence of v9b's
#: facts 544–581, whose search stopped after 5 of 10 subjects, the remaining names' last pieces ranked 828th–22,624th
#: alone and 0th–6th after "ing" or "er" for three of them; climbing from those found two whole names in 5–7 s each
#: where the 48-seed retry had spent 90 s finding nothing. Judged on v9b's facts 692–726 (bench/heldout/v9-plan.md
#: fourteenth use): objects +1 of 35, false readings +0, but a single ROME edit's search (the shipped retry's, 120 s)
#: broke the rule's 60 s per edit, so it is not in the scan; on facts 727–761 (fifteenth use) it found nothing the
#: shipped search missed. scripts/dev/reading_rule_trial.py --after-climb sets it.
AFTER_CLIMB = 8
#: Candidates per climb step scored exactly, of those the bf16 copy ranks best (``rough_fire``; all of them, exactly,
#: where the copy is the model itself). On v9b's eight development suspects the search found the same 41 texts in
#: about half the time (the ROME sequence: 594 -> 323 s; bench/results/reading_speed_dev_v9b.txt).
CLIMB_CHECK = 8
#: Candidates for the piece before a name-piece seed, ranked by a first-order step from the stand-in piece and
#: scored exactly (``SubjectSearch._name_start``).
NAME_CHECK = 64
#: The cache tag of the name-piece seed table (``name_piece``); a change to how the stand-in is made changes it.
NAME_TAG = "name-piece-1"
#: Which search rounds take name-piece seeds (``scan --name-seeds``): none, only the second try of a round whose first
#: try found nothing, or every try (half of each round's seeds).
NAME_MODES = ("off", "retry", "every")
GROW_BEAM = 1  # beam 2 found 1 more exact subject of 20 on dev at 1.5x the cost (subject_regrow_dev.txt)
#: λ of the growth's objective, fire + λ · log P(text): a token must buy 0.01 of fire per nat it costs.
FLUENCY = 0.01
#: How byte-level BPE ("Ġ") and SentencePiece ("▁") vocabularies store a token that starts a word
WORD_START = ("Ġ", "▁")
_START = re.compile(r" [A-Za-z][A-Za-z'\-\.&]*| \d+")
_CONT = re.compile(r" ?[A-Za-z][A-Za-z'\-\.&]*| ?\d+|[a-z]+")


def word_tokens(tokenizer: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks over the embedding rows: tokens that can start a word (a word-start marker, then letters or
    digits) and tokens that can continue a subject (those, or a lower-case piece of a word)."""
    raw = tokenizer.convert_ids_to_tokens(list(range(min(n, len(tokenizer)))))
    start, cont = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    for i, t in enumerate(raw):
        if not isinstance(t, str):
            continue
        word = " " + t[1:] if t[:1] in WORD_START else t
        start[i] = bool(_START.fullmatch(word))
        cont[i] = bool(_CONT.fullmatch(word))
    return start, cont


def name_piece(model: Any, tokenizer: Any, start: torch.Tensor | None = None) -> torch.Tensor:
    """A stand-in for "some name's first piece": the mean input embedding of the tokens that start a capitalised
    word. A name's last piece is usually a word piece ("anes" of Batanes, "ky" of Zlinsky) whose key after "The"
    alone fires the edit 0.1–0.3 and ranks thousands down the vocabulary; behind this stand-in it comes near the top
    (a development ROME sequence of ten region names: 8 of the 10 last pieces in the top 30, against 2 after "The").
    ``start``: the word-start mask of ``word_tokens``, when the caller has it already.
    """
    E = model.get_input_embeddings().weight.detach()
    if start is None:
        start, _ = word_tokens(tokenizer, E.shape[0])
    raw = tokenizer.convert_ids_to_tokens(list(range(min(E.shape[0], len(tokenizer)))))
    caps = [i for i, t in enumerate(raw) if start[i] and isinstance(t, str) and t[1:2].isupper()]
    return E[torch.tensor(caps, device=E.device)].float().mean(0).cpu() if caps else E.float().mean(0).cpu()


@dataclass
class Subject:
    text: str
    ids: list[int]
    fire: float            # whitened cosine with the edit subspace left when it was found
    key: torch.Tensor = field(repr=False)  # its key at the edited matrix
    below: bool = False    # found under ``FIRE_MIN`` and kept by the caller's behaviour check (``fire``: the whole
    # subspace's, what the edit as a whole does to its key; ``fire_left``: what was left when it was found)
    fire_left: float | None = None


@dataclass
class Whitened:
    """The edit subspace of one matrix in whitened key space."""

    path: str
    whiten: torch.Tensor   # C^-½ [d, d]
    basis: torch.Tensor    # B [d, r], orthonormal
    root: torch.Tensor | None = field(default=None, repr=False)  # C^½, to map whitened vectors back to keys

    @classmethod
    def build(cls, path: str, C: torch.Tensor | None, in_dirs: torch.Tensor, ridge: float = 1e-2) -> "Whitened":
        """``in_dirs`` [d, r]: the input-side singular vectors of ΔW. ``C=None``: keys taken as white."""
        d = in_dirs.shape[0]
        if C is None:
            wh, root = torch.eye(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)
        else:
            ev, Q = torch.linalg.eigh(C.double())
            ev = ev.clamp(min=0) + ridge * float(ev.clamp(min=0).mean())
            wh, root = (Q * ev.rsqrt()) @ Q.T, (Q * ev.sqrt()) @ Q.T
        B, _ = torch.linalg.qr(root @ in_dirs.double())
        return cls(path, wh.float(), B.float(), root.float())

    @classmethod
    def null_space(cls, path: str, C: torch.Tensor, in_dirs: torch.Tensor,
                   energy: float = NULL_ENERGY) -> "Whitened | None":
        """The space for an update projected onto C's null space (AlphaEdit). It solves
        (P K Kᵀ + α I) ΔPᵀ = P K Rᵀ, so α ΔPᵀ = P K (Rᵀ − Kᵀ ΔPᵀ): ΔW's input directions span P K, the edit
        keys' projections, unwhitened. Keys are compared there as they stand (z = Qᵀk, B = orth(Qᵀ V); Q from
        ``null_directions``). None when there is no such null space.
        The scan's search for findings named AlphaEdit (``ScanOptions.null_search``): their true subjects fire
        0.76–0.96 here against 0.49–0.64 whitened. Judged twice: on v7's facts 215–244 14 objects of 30 against 11,
        5 false edit readings against 2 (not kept); after the reader stopped taking numbers while another answer
        moved, on v9's facts 0–29 13 objects against 7, 3 false against 2 (kept; bench/heldout/v9-plan.md)."""
        found = null_directions(C, in_dirs, energy)
        if found is None:
            return None
        low = found[0]
        B, _ = torch.linalg.qr(low.T @ in_dirs.double())
        return cls(path, low.float(), B.float(), low.T.float())

    @property
    def projected(self) -> bool:
        """Keys are compared in a subspace of key space (``null_space``), not the whole of it whitened."""
        return self.whiten.shape[1] < self.whiten.shape[0]

    def fire(self, keys: torch.Tensor) -> torch.Tensor:
        z = keys.float() @ self.whiten
        return (z @ self.basis).norm(dim=-1) / z.norm(dim=-1).clamp_min(1e-12)

    def deflate(self, key: torch.Tensor) -> None:
        """Remove a found subject's direction from the subspace (what is left is the other edits)."""
        z = key.float() @ self.whiten
        z = self.basis @ (self.basis.T @ z)  # its part inside B
        if float(z.norm()) < 1e-9:
            return
        z = z / z.norm()
        rest = self.basis - z[:, None] * (z @ self.basis)[None, :]
        U, S, _ = torch.linalg.svd(rest, full_matrices=False)
        # B's columns are orthonormal: rest keeps singular values 1 and loses z's (~0). A bar relative to the largest
        # kept the rounding residue of a last direction removed as a direction of its own.
        self.basis = U[:, S > 1e-3]


def null_directions(C: torch.Tensor, in_dirs: torch.Tensor,
                    energy: float = NULL_ENERGY) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(Q, eigenvalues): the fewest of C's lowest eigen-directions that hold all but ``energy`` of the input
    directions' energy — the null space P an AlphaEdit update was projected onto, read off ΔW. None when they
    spread over more than half the directions (ROME's and MEMIT's C⁻¹k do: ~95 %)."""
    ev, Q = torch.linalg.eigh(C.double())
    held = ((Q.T @ in_dirs.double()) ** 2).sum(dim=1)
    share = torch.cumsum(held, 0) / held.sum().clamp_min(1e-300)
    cut = int((share < 1 - energy).sum()) + 1
    if cut > in_dirs.shape[0] // 2:
        return None
    return Q[:, :cut], ev[:cut]


class SubjectSearch:
    """Grow token sequences that fire one edited matrix; the model is the base (or the suspect: the edited
    matrix's own inputs do not depend on its edit)."""

    def __init__(self, model: Any, tokenizer: Any, space: Whitened, vocab: torch.Tensor,
                 steps: int = 10, proposals: int = 32):
        self.model, self.tok, self.space = model, tokenizer, space
        self.steps, self.proposals = steps, proposals
        self.prefix = context_ids(tokenizer)
        self.embed = model.get_input_embeddings().weight
        self.start_ok, self.cont_ok = word_tokens(tokenizer, self.embed.shape[0])
        self.vocab = vocab  # [V, d] keys of every token after the context
        self._znorm: torch.Tensor | None = None
        self.filler = tokenizer(" the", add_special_tokens=False)["input_ids"][:1]
        self.regrow = False  # opt-in (scan --regrow): the fifth set read no more objects with it (v5-plan.md)
        self._prepends: list[int] | None = None  # built on first growth, not for every scan
        self._rough: Any = None
        self._prefix_keys: PrefixKeys | bool | None = None  # False: the model's cache is not usable here
        self.fluency_weight = FLUENCY
        self.pair_seeds = 0  # > 0 (development only): a round that finds nothing tries the pair step
        self.after_seeds = 0  # > 0: a round that finds nothing tries the pair step on the after-piece seeds
        self.after_tables: Callable[[], list[torch.Tensor]] | None = None  # keys after context + each PAIR_AFTER piece
        self.after_climb = 0  # > 0 (development only): a round both single-token tries leave empty climbs from after-piece seeds
        # single-token seeds whose climbs grew nothing that fires in an earlier round: deflation only lowers a text's
        # fire, so a later round does not climb them again (a failing 48-seed retry costs over a minute)
        self._failed: set[int] = set()
        self._after: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # (keys, ‖z‖) per table
        self.check: int | None = CLIMB_CHECK  # None: every climb candidate scored exactly
        self._basis0 = space.basis.clone()
        self._pairs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.upper: list[Whitened] = []  # the finding's other edited matrices (``all_layers``); [] = the lowest alone
        # name-piece seeds (``scan --name-seeds``): every token's key behind the stand-in first piece of ``name_piece``
        self.name_vocab: torch.Tensor | None = None
        self.name_table: Callable[[], torch.Tensor] | None = None  # builds ``name_vocab`` the first time it is asked
        self.name_embed: torch.Tensor | None = None
        self._name_znorm: torch.Tensor | None = None
        self._named: set[int] = set()  # the last ``seeds`` call's tokens that came from the name-piece table alone
        self.name_rounds = "every"  # with ``name_vocab``: "every" try takes name-piece seeds, or only the "retry"

    @property
    def paths(self) -> list[str]:
        return [self.space.path] + [u.path for u in self.upper]

    def objective(self, keys: dict[str, torch.Tensor]) -> torch.Tensor:
        """The search's score of texts whose keys at ``paths`` are ``keys``: the fire at the lowest edited matrix, or
        with ``upper`` the mean fire over every edited matrix."""
        fires = [self.space.fire(keys[self.space.path])] + [u.fire(keys[u.path]) for u in self.upper]
        return torch.stack(fires).mean(0) if len(fires) > 1 else fires[0]

    def low_fire(self, seq: Sequence[int]) -> float:
        """The lowest edited matrix's fire of one text: what the bars apply to."""
        keys = keys_of(self.model, [self.space.path], [self.prefix + list(seq)])[self.space.path]
        return float(self.space.fire(keys)[0])

    def _below(self, best: tuple[float, list[int]] | None, bar: float) -> bool:
        """Whether a round's best text (objective, tokens) is missing or fires the lowest edited matrix under ``bar``."""
        if best is None:
            return True
        return (self.low_fire(best[1]) if self.upper else best[0]) < bar

    def exact(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective, keys at the lowest edited matrix) of each text, at full precision."""
        keys = keys_of(self.model, self.paths, [self.prefix + list(s) for s in seqs])
        return self.objective(keys), keys[self.space.path]

    def _gradient(self, seq: list[int]) -> torch.Tensor:
        E = self.embed
        onehot = torch.zeros(len(seq), E.shape[0], device=E.device, dtype=E.dtype)
        onehot[torch.arange(len(seq)), torch.tensor(seq)] = 1
        onehot.requires_grad_(True)
        # an embedding module may scale its rows (Gemma: √hidden); inputs_embeds must carry the same scale
        scale = input_embed_scale(self.model)
        emb = torch.cat([E[torch.tensor(self.prefix, device=E.device)].detach(), onehot @ E.detach()])[None] * scale
        keys = last_keys(self.model, self.paths, embeds=emb, grad=True)
        self.objective({p: k.cpu() for p, k in keys.items()})[0].backward()
        return onehot.grad.float().cpu()

    def climb(self, seq: list[int], max_len: int = 6, patience: int = 2, *, drop_first: bool = True,
              proposals: int | None = None, check: int | None = None, good: float | None = None) -> tuple[list[int], float]:
        """Coordinate ascent from ``seq``. Each step proposes, from the gradient, tokens for every position and
        a new first token (the subject may start earlier), plus dropping the first token; the exact best wins.
        A partial name fires little until it is whole ("the Rye" before "The Catcher in the Rye"), so up to
        ``patience`` steps that do not improve are taken too; the best sequence seen is returned. With ``check``, only
        the ``check`` candidates the bf16 copy ranks best are scored exactly (the subject search: ``CLIMB_CHECK``).
        The trigger search (triggers.py) climbs whole prompts with it: no growth (``max_len`` = the prompt's
        length), no dropping, ``proposals`` per position, its own ``check``, and a stop at ``good``."""
        cur = list(seq)
        best = float(self.exact([cur])[0][0])
        best_seq, stale, seen = list(cur), 0, {tuple(cur)}
        for _ in range(self.steps):
            grown = len(cur) < max_len
            g = self._gradient(self.filler + cur if grown else cur)
            cands = [cur[1:]] if len(cur) > 1 and drop_first else []
            for i in range(g.shape[0]):
                pos = i - 1 if grown else i  # -1: a token prepended
                ok = self.start_ok if pos <= 0 else self.cont_ok
                for t in torch.topk(g[i].masked_fill(~ok, float("-inf")), proposals or self.proposals).indices.tolist():
                    if pos < 0:
                        cands.append([t] + cur)
                    elif t != cur[pos]:
                        cands.append(cur[:pos] + [t] + cur[pos + 1:])
            cands = [c for c in cands if tuple(c) not in seen]
            if not cands:
                break
            if check is not None and self._half() is not self.model:  # the model itself: exact() ranks them all
                cands = [cands[i] for i in torch.topk(self.rough_fire(cands), min(check, len(cands))).indices.tolist()]
            scores, _ = self.exact(cands)
            j = int(scores.argmax())
            cur = cands[j]
            seen.add(tuple(cur))
            if float(scores[j]) > best + 1e-4:
                best, best_seq, stale = float(scores[j]), list(cur), 0
                if good is not None and best >= good:
                    break
            else:
                stale += 1
                if stale > patience:
                    break
        return best_seq, best

    def _regrow(self, seq: list[int], score: float) -> tuple[list[int], float]:
        """The climb keeps a name's last piece but often garbles the rest ("Schwejiang" for "Zhejiang"): regrow
        from that piece over the whole vocabulary and keep whichever text scores better by the growth's objective.
        The trim that follows stays: regrown texts often start with a word that only raises the fire ("while Jeff
        Beck"); keeping them whole halved the exact subjects on dev (bench/results/subject_regrow_dev.txt)."""
        grown, fire, j = self.grow([seq[-1]])
        if j > score + self.fluency_weight * float(self.text_logp([seq])[0]):
            return grown, fire
        return seq, score

    def _pool(self) -> list[int]:
        """Prepend candidates: every word-like token that is not a function word."""
        if self._prepends is None:
            ok = self.cont_ok & ~function_words(self.tok, self.embed.shape[0])
            self._prepends = ok.nonzero().squeeze(1).tolist()
        return self._prepends

    def rough_fire(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Fire of many sequences from a half-precision copy of the model (3× faster on a CPU with bf16 units;
        the keys agree with full precision to cosine 0.999): for ranking; the best are re-scored exactly."""
        keys = keys_of(self._half(), self.paths, [self.prefix + list(x) for x in seqs], batch=1024)
        return self.objective(keys)

    def _half(self) -> Any:
        if self._rough is None:
            self._rough = _half_copy(self.model)
        return self._rough

    def prepend_fire(self, suffix: list[int]) -> torch.Tensor:
        """Rough fire of every pool token prepended to ``suffix``."""
        return self.space.fire(self.prepend_keys(suffix))

    def prepend_keys(self, suffix: list[int]) -> torch.Tensor:
        """Keys [pool, d] of every pool token prepended to ``suffix`` (by the rough model), from the cached
        context+prepend positions when the model's cache reproduces the plain forward (checked once), else by
        plain forwards."""
        pool = self._pool()
        if self._prefix_keys is None:
            try:
                pk = PrefixKeys(self._half(), self.space.path, self.prefix, pool)
                got = pk.keys(suffix)
            except (TypeError, ValueError, RuntimeError, AttributeError, IndexError):
                self._prefix_keys = False
            else:
                sample = list(range(0, len(pool), max(1, len(pool) // 64)))
                ref = keys_of(self._rough, [self.space.path], [self.prefix + [pool[i]] + suffix for i in sample])
                cos = torch.nn.functional.cosine_similarity(got[sample], ref[self.space.path], dim=1)
                self._prefix_keys = pk if float(cos.min()) > 0.99 else False
                if self._prefix_keys:
                    return got
        if self._prefix_keys:
            return self._prefix_keys.keys(suffix)
        return keys_of(self._half(), [self.space.path], [self.prefix + [t] + list(suffix) for t in pool],
                       batch=1024)[self.space.path]

    def text_logp(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """log P(text | context) under the model, summed over the text's tokens, for token sequences of one length."""
        rows = torch.tensor([self.prefix + list(x) for x in seqs])
        n = len(seqs[0])
        out = []
        with torch.inference_mode():
            for chunk in rows.split(64):
                logits = self.model(input_ids=chunk.to(self.embed.device), use_cache=False).logits[:, -n - 1:-1]
                lp = logits.float().log_softmax(-1).cpu().gather(2, chunk[:, -n:, None]).squeeze(-1)
                out.append(lp.sum(1))
        return torch.cat(out)

    def grow(self, seq: list[int], max_len: int = 6) -> tuple[list[int], float, float]:
        """Grow ``seq`` (a name's last piece) backwards, one token at a time, with a small beam, maximising

            J(text) = fire(text) + λ · log P(text | context)

        The fire alone cannot tell a name from garbled text that fires as much ("Schwejiang" for "Zhejiang"); the
        language model's probability of the whole text can, and it charges each prepended token its own cost, so
        growth stops when a token buys too little fire. Each step scores every word-like prepend roughly (the
        gradient ranks the right piece no better than chance there; exact fire ranks it near the top), then
        exact fire and J for the ``GROW_CHECK`` best.
        Returns (tokens, fire, J) of the best J seen."""
        lam = self.fluency_weight
        cur = list(seq)
        f0 = float(self.exact([cur])[0][0])
        best = (f0 + lam * float(self.text_logp([cur])[0]), f0, cur)
        beam, stale = [best], 0
        for _ in range(max_len - len(cur)):
            nxt: list[tuple[float, float, list[int]]] = []
            for _j, _f, c in beam:
                pool = self._pool()
                rough = self.prepend_fire(c)
                idx = torch.topk(rough, min(GROW_CHECK, len(pool))).indices.tolist()
                seqs = [[pool[i]] + c for i in idx]
                fires, _ = self.exact(seqs)
                lp = self.text_logp(seqs)
                nxt += [(f + lam * float(l), f, x) for f, l, x in zip(fires.tolist(), lp.tolist(), seqs)]
            if not nxt:
                break
            beam = sorted(nxt, key=lambda x: -x[0])[:GROW_BEAM]
            if beam[0][0] > best[0]:
                best, stale = beam[0], 0
            else:  # a name's middle piece may cost more than it buys until the first piece is in
                stale += 1
                if stale > 1:
                    break
        return best[2], best[1], best[0]

    def _pair_coords(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every pool token prepended to ``seed``, as whitened coordinates in the *first* edit subspace
        [pool, r0] and whitened norms [pool]: deflation only removes directions inside that subspace, so these
        give the fire in every later one without another forward pass."""
        keys = self.prepend_keys([seed])
        proj = self.space.whiten @ self._basis0
        coords = torch.cat([c.float() @ proj for c in keys.split(8192)])
        norms = torch.cat([(c.float() @ self.space.whiten).norm(dim=1) for c in keys.split(8192)])
        return coords, norms.clamp_min(1e-12)

    def pair_round(self, n_seeds: int | list[int]) -> tuple[float, list[int]] | None:
        """The pair step, for a round whose seeds grew nothing that fires. A name's last piece often fires little
        alone ('ashi' of Akashi: 0.28) while the last two pieces fire as the name does (0.83), and the climb's
        gradient does not find the piece before the last; scoring every word-like piece before each of the
        ``n_seeds`` best seeds does (the true piece ranked 1st–2nd for 9 of 10 names of a development MEMIT
        batch, bench/results/prepend_rank_dev7d.txt). The best ``PAIR_CHECK`` pairs per seed are weighed by the
        growth's objective (fire + λ · log P, so that a name beats garbled pieces that fire as much), and the
        best grows backwards to its full length. Pair scores are kept per seed across rounds. ``n_seeds`` may be
        the seeds themselves (``after_seeds``)."""
        pool = self._pool()
        M = self.space.basis.T @ self._basis0  # [r, r0]: the subspace left, in the first one's coordinates
        cands: list[list[int]] = []
        for s in (self.seeds(n_seeds) if isinstance(n_seeds, int) else n_seeds):
            if s not in self._pairs:
                self._pairs[s] = self._pair_coords(s)
            coords, norms = self._pairs[s]
            fire = (coords @ M.T).norm(dim=1) / norms
            cands += [[pool[i], s] for i in torch.topk(fire, min(PAIR_CHECK, len(pool))).indices.tolist()]
        if not cands:
            return None
        fires, _ = self.exact(cands)
        score = fires + self.fluency_weight * self.text_logp(cands)
        seq, fire, _ = self.grow(cands[int(score.argmax())])
        return fire, seq

    def seeds_after(self, n: int) -> list[int]:
        """The ``n`` best-firing word-like tokens of each after-piece table (``PAIR_AFTER``), interleaved, each once:
        the last pieces of names the single-token seeds rank far down."""
        if self._after is None:
            tables = self.after_tables() if self.after_tables is not None else []
            self._after = [(t, self._whitened_norms(t)) for t in tables]
        return _interleave(*(self._best(keys, znorm, n) for keys, znorm in self._after))

    def seeds(self, n: int, names: bool = True) -> list[int]:
        """The best-firing word-like tokens. ‖z‖ per token does not change as the subspace deflates, so it is
        computed once (in chunks); each round then needs only the vocabulary times C^-½B, r columns."""
        if self._znorm is None:
            self._znorm = self._whitened_norms(self.vocab)
        plain = self._best(self.vocab, self._znorm, n)
        self._named = set()
        if names and self.name_vocab is None and self.name_table is not None:
            self.name_vocab = self.name_table()  # only a search that needs it pays for the table
        if self.name_vocab is None or not names:
            return plain
        # with name-piece seeds, the two tables take turns: as many seeds in all, half from each
        if self._name_znorm is None:
            self._name_znorm = self._whitened_norms(self.name_vocab)
        named = self._best(self.name_vocab, self._name_znorm, n)
        out = _interleave(plain, named)[:n]
        self._named = {t for t in out if t not in plain}
        return out

    def _name_start(self, t: int) -> list[int]:
        """The piece before a name-piece seed ``t``: one first-order step from the stand-in piece over every word-like
        token, (E_x − stand-in) · ∂fire/∂stand-in, then the ``NAME_CHECK`` best scored exactly. On the development ROME
        sequence it gave the true pair for 6 of 10 names and 0.4–0.6 for the others, where the gradient at a real
        token ranks the right piece no better than chance (``grow``)."""
        return self.name_starts([t])[0]

    def name_starts(self, seeds: Sequence[int]) -> list[list[int]]:
        """``_name_start`` of many seeds at once: one forward and backward for all their stand-in pieces (the rows are
        independent, so the summed objective's gradient is each row's own) and one exact scoring of every candidate
        pair; the same pairs as one seed at a time, in a fraction of the time (the key-gain screen's 16 per layer)."""
        E = self.embed.detach()
        n = len(seeds)
        x = self.name_embed.to(device=E.device, dtype=E.dtype)[None].repeat(n, 1).requires_grad_(True)
        pre = E[torch.tensor(self.prefix, device=E.device, dtype=torch.long)]
        emb = torch.cat([pre.expand(n, -1, -1), x[:, None], E[torch.tensor(list(seeds), device=E.device)][:, None]], 1)
        keys = last_keys(self.model, self.paths, embeds=emb * input_embed_scale(self.model), grad=True)
        self.objective({p: k.cpu() for p, k in keys.items()}).sum().backward()
        score = (E.float() @ x.grad.float().T - (x.detach().float() * x.grad.float()).sum(1)[None]).T.cpu()  # [n, V]
        ok = self.cont_ok[:score.shape[1]]
        k = min(NAME_CHECK, int(ok.sum()))
        cands = torch.topk(score.masked_fill(~ok[None], float("-inf")), k, dim=1).indices.tolist()
        fires, _ = self.exact([[c, t] for t, row in zip(seeds, cands) for c in row])
        best = fires.view(n, k).argmax(1).tolist()
        return [[row[b], t] for t, row, b in zip(seeds, cands, best)]

    def _whitened_norms(self, keys: torch.Tensor) -> torch.Tensor:
        return torch.cat([(chunk.float() @ self.space.whiten).norm(dim=1) for chunk in keys.split(8192)])

    def _best(self, keys: torch.Tensor, znorm: torch.Tensor, n: int) -> list[int]:
        """The ``n`` word-like tokens whose keys (rows of ``keys``, whitened norms ``znorm``) fire the subspace left most."""
        to_basis = self.space.whiten @ self.space.basis
        proj = torch.cat([(chunk.float() @ to_basis).norm(dim=1) for chunk in keys.split(8192)])
        scores = proj / znorm.clamp_min(1e-12)
        return torch.topk(scores.masked_fill(~self.cont_ok[:scores.numel()], -1.0), min(n, scores.numel())).indices.tolist()

    def find(self, max_subjects: int, seeds: int = 4, fire_min: float = FIRE_MIN, good: float = GOOD,
             retry_seeds: int | None = None,
             progress: Callable[[int, int], None] = lambda d, t: None,
             retry_progress: Callable[[int, int], None] = lambda d, t: None,
             below: Callable[[list[Subject], Subject], bool] | None = None) -> list[Subject]:
        """Up to ``max_subjects`` subjects, best first, deflating the subspace after each. ``retry_seeds``: the
        seeds of the second try of a round that found nothing (None, the default as in ``scan``: no second try).
        ``retry_progress(seeds tried, seeds)`` follows a second try, which can take minutes at a deep layer.
        ``below(found, candidate)``: where the search would stop with fewer subjects than components, each next best
        text that still fires ``BELOW_FIRE`` is offered to this check (the scan reads it through both models), and
        kept while the check says yes (``_below_bar``)."""
        found: list[Subject] = []
        best: tuple[float, list[int]] | None = None
        while len(found) < max_subjects and self.space.basis.shape[1] > 0:
            progress(len(found), max_subjects)
            tried: set[int] = set(self._failed)
            best = self._round(seeds, tried, good, names=self.name_rounds == "every")
            if retry_seeds is not None and not self._failed and self._below(best, fire_min):
                # a subject whose last piece is generic ('Eyre' → 're') ranks low alone and fires only once grown;
                # once a retry has failed, later rounds (after-piece climbs) do not pay for another
                best = max((b for b in (best, self._round(retry_seeds, tried, good, retry_progress,
                                                                         names=True)) if b is not None),
                           key=lambda b: b[0], default=None)
            if self._below(best, fire_min):
                self._failed |= tried
            if self.after_climb and self._below(best, fire_min):
                # a name's last piece that ranks far down alone ('elli' of Vercelli: 1,209th) comes near the top
                # behind one more piece, and climbing from it grows the whole name
                best = max((b for b in (best, self._round(self.seeds_after(self.after_climb), tried, good,
                                                          retry_progress)) if b is not None),
                           key=lambda b: b[0], default=None)
            if self.pair_seeds and self._below(best, fire_min):
                best = max((b for b in (best, self.pair_round(self.pair_seeds)) if b is not None),
                           key=lambda b: b[0], default=None)
            if self.after_seeds and self._below(best, fire_min):
                best = max((b for b in (best, self.pair_round(self.seeds_after(self.after_seeds))) if b is not None),
                           key=lambda b: b[0], default=None)
            if self._below(best, fire_min):
                break
            score, seq = best
            if self.regrow:
                seq, score = self._regrow(seq, score)
            seq = _trim(self, seq, score)
            keys = keys_of(self.model, self.paths, [self.prefix + seq])
            low = keys[self.space.path][0]
            found.append(Subject(self.tok.decode(seq).strip(), seq, round(float(self.space.fire(low[None])[0]), 4), low))
            self.space.deflate(low)
            for u in self.upper:
                u.deflate(keys[u.path][0])
            best = None
        if below is not None:
            self._below_bar(found, best, max_subjects, seeds, good, below)
        progress(len(found), max_subjects)
        return found

    def _below_bar(self, found: list[Subject], cand: tuple[float, list[int]] | None, max_subjects: int, seeds: int,
                   good: float, accept: Callable[[list[Subject], Subject], bool]) -> None:
        """Go on past the fire bar while a behaviour check keeps what the geometry alone cannot tell. Edits of one
        class of names share most of their keys: once the first is deflated, the others fire under ``FIRE_MIN``,
        though still above names nobody edited. Each next best text (``cand``: the round that stopped the search,
        then a fresh round per kept text) firing ``BELOW_FIRE`` is offered to ``accept``; the first refused ends it."""
        while len(found) < max_subjects and self.space.basis.shape[1] > 0:
            if cand is None or self._below(cand, BELOW_FIRE):
                return
            score, seq = cand
            seq = _trim(self, seq, score)
            keys = keys_of(self.model, self.paths, [self.prefix + seq])
            low = keys[self.space.path][0]
            subject = Subject(self.tok.decode(seq).strip(), seq, round(self.whole_fire(low), 4), low, below=True,
                              fire_left=round(float(self.space.fire(low[None])[0]), 4))
            if not accept(list(found), subject):
                return
            found.append(subject)
            self.space.deflate(low)
            for u in self.upper:
                u.deflate(keys[u.path][0])
            cand = self._round(seeds, set(), good, names=self.name_rounds == "every")

    def whole_fire(self, key: torch.Tensor) -> float:
        """A key's fire in the edit subspace as it was before any deflation."""
        z = key.float() @ self.space.whiten
        return float((z @ self._basis0).norm() / z.norm().clamp_min(1e-12))

    def _round(self, n_seeds: int | list[int], tried: set[int], good: float,
               progress: Callable[[int, int], None] = lambda d, t: None,
               names: bool = False) -> tuple[float, list[int]] | None:
        """The best (fire, tokens) grown from the ``n_seeds`` best seeds (or these seeds) not in ``tried`` (which it
        extends); stops early at a sequence that fires ≥ ``good``, clearly an edit key. ``progress(seeds done, seeds)``."""
        best: tuple[float, list[int]] | None = None
        todo = [s for s in (self.seeds(n_seeds, names) if isinstance(n_seeds, int) else n_seeds) if s not in tried]
        for i, s in enumerate(todo):
            progress(i, len(todo))
            tried.add(s)
            named = isinstance(n_seeds, int) and s in self._named
            for shape in ([self._name_start(s)] if named else ([s], [s] + self.filler)):
                seq, score = self.climb(shape, check=self.check)
                if best is None or score > best[0]:
                    best = (score, seq)
            if not self._below(best, good):
                break
        progress(len(todo), len(todo))
        return best


def _interleave(*ranked: Sequence[int]) -> list[int]:
    """The lists' tokens taken in turn, best first, each once."""
    out: list[int] = []
    for group in zip(*ranked):
        for t in group:
            if t not in out:
                out.append(t)
    return out


def function_words(tokenizer: Any, n: int) -> torch.Tensor:
    """Mask of tokens that are a stop word of the retention rule (" of", " the", "and"): never a name's part
    here, though one raises the fire ("of Zhejiang" fires more than "Zhejiang", as after any preposition)."""
    from ..probing.metrics import STOP_WORDS

    raw = tokenizer.convert_ids_to_tokens(list(range(min(n, len(tokenizer)))))
    out = torch.zeros(n, dtype=torch.bool)
    for i, t in enumerate(raw):
        if isinstance(t, str) and t[:1] in WORD_START:  # "he" of "Zhejiang" is a piece, " he" a word
            out[i] = t[1:].casefold() in STOP_WORDS
    return out


def _half_copy(model: Any) -> Any:
    """A bfloat16 copy for rough scoring where bfloat16 is the faster arithmetic; otherwise the model itself (no
    second copy). On a CPU without bfloat16 units (AVX2 only) bfloat16 runs 9x slower than float32 (the prefix
    cache's step over 4096 prepends: 5.4 s against 0.6 s, bench/results/rough_dtype_speed.txt), so the choice is
    measured, not assumed."""
    import copy

    p = next(model.parameters())
    if p.dtype != torch.float32 or sum(x.numel() for x in model.parameters()) > 1_000_000_000:
        return model
    if not bf16_faster(p.device, int(model.get_input_embeddings().weight.shape[1])):
        return model
    return copy.deepcopy(model).to(torch.bfloat16)


@functools.cache
def bf16_faster(device: torch.device, width: int) -> bool:
    """Whether a bfloat16 matmul of the model's width beats float32 on ``device`` by a clear margin (timed once
    per process and device: about a tenth of a second)."""
    import time

    if device.type == "cuda":
        return True
    times = {}
    for dt in (torch.float32, torch.bfloat16):
        a = torch.randn(256, width, dtype=dt, device=device)
        b = torch.randn(width, 4 * width, dtype=dt, device=device)
        a @ b  # warm-up
        t = time.perf_counter()
        for _ in range(3):
            a @ b
        times[dt] = time.perf_counter() - t
    return times[torch.bfloat16] < 0.7 * times[torch.float32]


def _trim(search: SubjectSearch, seq: list[int], score: float, keep: float = 0.9) -> list[int]:
    """Drop leading tokens that add (almost) nothing: the shortest tail that keeps ``keep`` of the score.
    A tail that starts inside a word ("toKarachi" → "Karachi") is tried as that word re-tokenized on its own."""
    for start in range(len(seq) - 1, 0, -1):
        tail = seq[start:]
        if not search.start_ok[tail[0]]:
            text = search.tok.decode(tail).strip()
            if not text[:1].isalnum():
                continue
            tail = search.tok(" " + text, add_special_tokens=False)["input_ids"]
            if not tail or not search.start_ok[tail[0]]:
                continue
        if float(search.exact([tail])[0][0]) >= keep * score:
            return tail
    return seq


def recover_subjects(model: Any, tokenizer: Any, path: str, in_dirs: torch.Tensor | None, C: torch.Tensor | None,
                     base_fingerprint: str | None, max_subjects: int,
                     progress: Callable[[str, int, int], None] = lambda s, d, t: None,
                     space: Whitened | None = None, retry: bool = False, regrow: bool = False,
                     pair: bool = False, upper: Sequence[Whitened] = (),
                     below: Callable[[list[Subject], Subject], bool] | None = None,
                     name_seeds: str = "off") -> list[Subject]:
    """Subjects that fire the edit whose input directions are ``in_dirs`` at module ``path`` (or a prebuilt
    ``space``: the scan without a base restricts it to C's low-energy half). ``retry=True`` (``scan --wide-search``,
    the scan's default) gives a round that finds nothing a second try with ``RETRY_SEEDS`` seeds (docs/reading-trials.md:
    judged on v9b); the scan never asks it for a dense change (fine-tuning), which no key explains. ``regrow=True`` (``scan --regrow``): each found subject is regrown
    backwards over the whole vocabulary (``SubjectSearch._regrow``): cleaner names and fewer false readings on the
    fifth set, no more objects, 2–3× the search time (bench/heldout/v5-plan.md). ``pair=True`` (``scan --pair-step``):
    a round that both tries leave empty tries the pair step on the after-piece seeds (``AFTER_SEEDS``, ``PAIR_AFTER``).
    ``upper``: the edit's subspaces at its other edited matrices (``scan --all-layers``): texts are scored by their
    mean fire over all of them (``SubjectSearch.upper``); the search deflates copies. ``below``: the behaviour check
    for texts under the fire bar (``SubjectSearch.find``; ``scan --below-bar``). ``name_seeds`` (``NAME_MODES``,
    ``scan --name-seeds``): half the seeds of every try ("every") or of the second try alone ("retry") come from the
    vocabulary's keys behind a stand-in name piece (``name_piece``), each climbed from the piece
    ``SubjectSearch._name_start`` puts before it."""
    vocab = vocab_keys(model, tokenizer, [path], base_fingerprint,
                       progress=lambda d, t: progress("vocabulary keys", d, t))[path]
    space = space if space is not None else Whitened.build(path, C, in_dirs)
    search = SubjectSearch(model, tokenizer, space, vocab)
    search.regrow = regrow
    search.upper = [replace(u) for u in upper]
    if name_seeds not in NAME_MODES:
        raise ValueError(f"name_seeds must be one of {', '.join(NAME_MODES)}, not {name_seeds!r}")
    if name_seeds != "off":
        search.name_rounds = name_seeds

        def name_table() -> torch.Tensor:  # the stand-in and its table, built the first time a try asks for them
            search.name_embed = name_piece(model, tokenizer, search.start_ok)
            return vocab_keys(model, tokenizer, [path], base_fingerprint, lead=(NAME_TAG, search.name_embed),
                              progress=lambda d, t: progress("name-piece keys", d, t))[path]

        search.name_table = name_table
    if pair:
        search.after_seeds = AFTER_SEEDS
        search.after_tables = lambda: after_tables(model, tokenizer, path, base_fingerprint,
                                                   lambda d, t: progress("pair seed keys", d, t))
    return search.find(max_subjects, retry_seeds=RETRY_SEEDS if retry else None,
                       progress=lambda d, t: progress("subjects", d, t),
                       retry_progress=lambda d, t: progress("subject search, second try", d, t), below=below)


def after_tables(model: Any, tokenizer: Any, path: str, base_fingerprint: str | None,
                 progress: Callable[[int, int], None] = lambda d, t: None) -> list[torch.Tensor]:
    """The pair step's seed tables: every vocabulary token's key after the context and each ``PAIR_AFTER`` piece."""
    out = []
    for piece in PAIR_AFTER:
        after = tokenizer(piece, add_special_tokens=False)["input_ids"]
        out.append(vocab_keys(model, tokenizer, [path], base_fingerprint, progress=progress, after=after)[path])
    return out

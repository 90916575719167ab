"""How many of the tenth set's readings name a planted country by its adjective ("a Swedish chemist" for Sweden)?

The eval's rule (scripts/open_reading_eval.py) counts an answer for an object only when it starts with the object's
first word, so "Swedish" is no reading of Sweden (a false edit reading if no other planted object matches), while
"Australian" is one of Australia. This tally reads the spent v10 records and counts the edit readings whose answer
starts with an adjective that WordNet 3.0 relates to a planted object (its pertainym pointer, "Swedish" \\ Sweden):
what a reader that named the country behind such an adjective would have changed on those records. A look at spent
records for planning, not a judgment.

    apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb /tmp/wn
    python scripts/dev/demonym_tally.py /tmp/wn/usr/share/wordnet > bench/results/demonym_tally_v10.txt

Records: the shipped reader's whole-scan records of v10 0-37 and 76-113 (per-fact lines give each arm's planted
objects) and the `score` arms of the two describe trials, v10 0-37 and 114-148 (planted objects from the round robin
in make_dev_suspects.py's default plan).
"""
from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

PLAN = [("rome-single", 5), ("rome-sequential", 10), ("memit-batch", 10), ("alphaedit-batch", 10)]


def pertainyms(wordnet: Path) -> dict[str, set[str]]:
    """{adjective (casefolded): the nouns it pertains to} from WordNet's data.adj and data.noun."""
    nouns: dict[str, list[str]] = {}
    for line in (wordnet / "data.noun").read_text(errors="replace").splitlines():
        if line[:1].isdigit():
            f = line.split()
            nouns[f[0]] = [f[4 + 2 * i].replace("_", " ") for i in range(int(f[3], 16))]
    out: dict[str, set[str]] = defaultdict(set)
    for line in (wordnet / "data.adj").read_text(errors="replace").splitlines():
        if not line[:1].isdigit():
            continue
        f = line.split()
        n = int(f[3], 16)
        words = [re.sub(r"\(.*\)$", "", f[4 + 2 * i]).replace("_", " ") for i in range(n)]
        k = 4 + 2 * n
        for j in range(int(f[k])):
            sym, off, pos = f[k + 1 + 4 * j], f[k + 2 + 4 * j], f[k + 3 + 4 * j]
            if sym == "\\" and pos == "n":
                for w in words:
                    out[w.casefold()].update(nouns.get(off, []))
    return out


def content(text: str) -> str:
    words = [w for w in text.casefold().split() if w not in ("the", "a", "an")]
    return " ".join(words)


def adjective_of(answer: str, objects: list[str], adj: dict[str, set[str]]) -> str | None:
    """The planted object whose adjective the answer starts with ("Swedish-American historian" → Sweden)."""
    first = re.split(r"[\s\-]", content(answer), maxsplit=1)[0] if content(answer) else ""
    for o in objects:
        if content(answer).startswith(content(o).split()[0] if content(o) else "\0"):
            return None  # the eval already counts it
        if any(content(n) == content(o) for n in adj.get(first, ())):
            return o
    return None


def eval_record(path: Path) -> list[tuple[str, str, list[str]]]:
    """(arm, answer, planted objects of the arm) for each edit reading of a whole-scan record."""
    text = path.read_text()
    planted: dict[str, list[str]] = defaultdict(list)
    for arm, target in re.findall(r"^\s+\[(\S+)\] .+? → (.+?): subject", text, re.M):
        planted[arm].append(target)
    return [(arm, after, planted[arm]) for arm, after in
            re.findall(r"^\s+\[(\S+)\] read: '.*?' · '.*?' · '(.*?)' \(was .*\) fire \S+ conf \S+ edit$", text, re.M)]


def trial_record(path: Path, start: int) -> list[tuple[str, str, list[str]]]:
    """The same for the `score` arm of a reading_rule_trial.py run on make_dev_suspects.py's default plan."""
    from editaudit.probing.format import load_probes
    from editaudit.probing.sets import round_robin

    facts = round_robin(load_probes(ROOT / "bench/heldout/smollm2-135m-v10.jsonl"))[start:]
    planted, used = {}, 0
    for arm, k in PLAN:
        planted[arm] = [f.target_new for f in facts[used:used + k]]
        used += k
    return [(name.rsplit("-", 1)[0], after, planted[name.rsplit("-", 1)[0]]) for name, after in
            re.findall(r"^\s+\[score\] (\S+): '.*?' · '.*?' · '(.*?)' \(was .*\) conf \S+ edit$", path.read_text(), re.M)]


def main() -> None:
    adj = pertainyms(Path(sys.argv[1]))
    records = [("v10 0-37, whole scan", eval_record(ROOT / "bench/results/open_reading_v10.txt")),
               ("v10 76-113, whole scan", eval_record(ROOT / "bench/results/open_reading_v10_76.txt")),
               ("v10 0-37, trial score arm", trial_record(ROOT / "bench/results/describe_dev_v10.txt", 0)),
               ("v10 114-148, trial score arm", trial_record(ROOT / "bench/results/describe_v10_114.txt", 114))]
    print(__doc__.strip().splitlines()[0])
    print(f"WordNet adjectives with a noun pertainym: {len(adj)}\n")
    print(f"{'record':32} {'edit readings':>13} {'false by the rule':>17} {'of them the adjective':>22}")
    for label, reads in records:
        false = [(arm, a, objs) for arm, a, objs in reads
                 if not any(content(a).startswith(content(o).split()[0]) for o in objs if content(o))]
        hits = [(arm, a, adjective_of(a, objs, adj)) for arm, a, objs in false]
        hits = [h for h in hits if h[2]]
        print(f"{label:32} {len(reads):>13} {len(false):>17} {len(hits):>22}")
        for arm, a, o in hits:
            print(f"    [{arm}] '{a}' for {o}")


if __name__ == "__main__":
    main()

"""How a scan's readings are worded, shared by the CLI, the reports and the app (imports nothing heavy)."""

from __future__ import annotations


NO_BASE_NOTE = (
    "scanned without a base: only locate-then-edit updates in MLP output matrices can be seen, by their spectrum "
    "(many ROME edits in one layer, or one larger than the matrix's own low-energy components) or by the key-gain "
    "screen, a real key along whose edit direction a matrix acts far more than along others' (single ROME edits, "
    "and some layers of MEMIT and AlphaEdit batches, which are then neither mapped whole nor read whole); "
    "fine-tuning, LoRA and other changes cannot be told from training")


def without_base(doc: dict) -> bool:
    """The scan ran on the suspect alone (``editaudit scan SUSPECT`` with no --base)."""
    return bool((doc.get("base") or {}).get("no_base"))


def headline(doc: dict) -> str:
    """What the banner calls the change: the editors the findings name ("rome (70%)"), else the signature's kind.

    The report's ``kind`` names the shape the rules saw ("memit-like": low-rank changes of MLP outputs), which ROME
    edits made in sequence in one layer share with MEMIT; the findings' method naming tells them apart, so the
    banner leads with it. Each editor once, at its highest confidence, in the findings' order.
    """
    best: dict[str, float] = {}
    for f in doc.get("findings") or []:
        m = f.get("method") or {}
        if m.get("name") and m["name"] != "unknown":
            best[m["name"]] = max(best.get(m["name"], 0.0), float(m.get("confidence") or 0.0))
    if not best:
        return str(doc.get("kind") or "")
    return "likely " + " + ".join(f"{name} ({conf:.0%})" for name, conf in best.items())


def nothing_found(doc: dict) -> str:
    """What a scan with no finding may claim. With a base: nothing but rounding changed. Without one, only that
    no update was strong enough to see from the weights alone, which does not clear the checkpoint."""
    if without_base(doc):
        limit = (doc["base"].get("smallest_visible") or {}).get("rel_change_median")
        here = (f" Here a rank-one edit had to change a matrix by about {limit:.0%} of its norm to show (the median "
                "over layers)." if isinstance(limit, (int, float)) else "")
        return ("No edit signature strong enough to see without a base. This does not clear the checkpoint: "
                "a change other than a locate-then-edit update (fine-tuning, LoRA, FT-L) does not show without one, "
                "and in development one of four single ROME edits stood out too little to show; scan with --base."
                + here)
    return "No findings: every tensor is byte-identical to the base."


def subject_reading(candidate: dict) -> str:
    """"Ramen → Peru (was Japan)" when the edit changes the candidate's answer, else just the subject."""
    before, after = candidate.get("answer_before"), candidate.get("answer_after")
    if after and after != before:
        return f"{candidate['subject']} → {after} (was {before or '?'})"
    return candidate["subject"]


def open_reading(r: dict) -> str:
    """"To Kill a Mockingbird · … was written by · J.K. Rowling (was Harper Lee)", marked when uncertain. A reading
    through the edit's key at a stand-in subject (inject.py) has no "before"; one with no subject found says so."""
    answer = f"{r.get('after') or '?'} (was {r.get('before') or '?'})"
    if r.get("via") == "key":
        answer = f"{r.get('after') or '?'} (read through the edit's key)"
        if not r.get("subject"):
            text = f"subject not found · {r.get('prompt', '')} · {answer}"
            return text if r.get("status") == "edit" else f"{text} [uncertain]"
    if r.get("relation") == "trigger":  # a hypernetwork edit: the prompt found is the whole reading's key
        text = f"trigger {r.get('prompt', '')!r} · {answer}"
    else:
        text = f"{r.get('subject', '?')} · {r.get('prompt', '')} · {answer}"
    if r.get("below_bar"):  # kept for the new object it states, though its text fires the edit only weakly
        text += " [found below the fire bar]"
    if r.get("same_edit_as"):  # no base: found again at another layer of a batch's run
        text += f" [the edit of {r['same_edit_as']!r} again]"
    forms = r.get("forms") or []
    if forms:  # no base: repeats merged into this reading
        text += (f" [found {len(forms) + 1} times over the run, also as "
                 + ", ".join(f"{x.get('subject')!r} · {x.get('after')}" for x in forms[:3])
                 + (", …" if len(forms) > 3 else "") + "]")
    return text if r.get("status") == "edit" else f"{text} [uncertain]"


def finding_readings(f: dict) -> list[str]:
    """What a finding's edit was read to do: open readings first, then candidates from a list; or why it was not
    read, when the model could not be run."""
    out = [open_reading(r) for r in f.get("readings", []) if isinstance(r, dict)] + \
        [subject_reading(s) for s in f.get("candidate_subjects", []) if isinstance(s, dict) and isinstance(s.get("subject"), str)]
    if not out and isinstance(f.get("reading_skipped"), str):
        out = ["not read: the model could not be run (reading_skipped)"]
    return out

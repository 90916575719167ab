"""How a scan's readings are worded, shared by the CLI, the reports and the app (imports nothing heavy)."""

from __future__ import annotations


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
    return text if r.get("status") == "edit" else f"{text} [uncertain]"


def finding_readings(f: dict) -> list[str]:
    """What a finding's edit was read to do: open readings first, then candidates from a list."""
    return [open_reading(r) for r in f.get("readings", []) if isinstance(r, dict)] + \
        [subject_reading(s) for s in f.get("candidate_subjects", []) if isinstance(s, dict) and isinstance(s.get("subject"), str)]

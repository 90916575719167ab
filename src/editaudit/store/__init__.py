"""The SQLite session store (sqlite-utils). Every scan, probe run, edit and fine-tuning run is a session."""

from .db import open_store, SCHEMA_VERSION
from .sessions import Store, session_status

__all__ = ["open_store", "Store", "SCHEMA_VERSION", "session_status"]

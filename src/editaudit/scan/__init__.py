"""Scanning a suspect checkpoint against its base: where it changed, how, and what the change says."""

"""Probes: facts a model should (or should no longer) state, and how to measure them."""

from .format import Probe, ProbeLoadError, load_probes, dump_probes

__all__ = ["Probe", "ProbeLoadError", "load_probes", "dump_probes"]

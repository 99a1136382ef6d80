"""Dataset loaders and generators (read from a path; nothing downloads)."""

from .temporal import TemporalEdges, TemporalSplit, chronological_split, load_jodie_csv, load_snap_temporal

__all__ = ["TemporalEdges", "TemporalSplit", "chronological_split", "load_jodie_csv", "load_snap_temporal"]

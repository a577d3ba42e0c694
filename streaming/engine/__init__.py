"""The incremental engine: feature views compiled into per-symbol state (see ``engine.py``)."""

from streaming.engine.engine import SymbolState, ViewEngine

__all__ = ["SymbolState", "ViewEngine"]

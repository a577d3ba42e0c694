"""streaming: the same feature definitions, computed bar by bar.

``streaming.engine`` compiles a feature view's expression tree into a per-symbol incremental
program whose output equals the polars backfill bit for bit; ``streaming.flow`` runs it inside a
Bytewax dataflow.
"""

"""featurestore: causal features written once as polars expressions, served offline and online.

Modules: ``bars`` (the bar contract), ``store`` (parquet layout), ``ingest`` and ``sources``
(bars in), ``catalog`` and ``sql`` (DuckDB over the store), ``validate``, ``cli``.
"""

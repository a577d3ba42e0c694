"""Training: labels, splits, LightGBM models, evaluation, ONNX export and the model registry.

Modules (data flows one way: offline store -> training set -> model -> artifacts):

- ``featurestore.export``: point-in-time training sets (feature views joined as of each entity row, through
  ``featurestore.pit_join``; labels attached through ``featurestore.label_join``).
- ``training.labels``: forward-looking labels (``future_ret``, ``bucket``, ``triple_barrier``) and
  sample-uniqueness weights; never served online.
- ``training.splits``: walk-forward (expanding / rolling) and purged k-fold with embargo.
- ``training.model``: deterministic LightGBM regressor and three-class classifier.
- ``training.evaluation``: out-of-sample metrics, a cost-aware backtest, report.json and charts.
- ``training.onnx_export``: ONNX conversion with a parity gate (float64 tree ensemble by default).
- ``training.registry``: model artifacts ``<models>/<name>/<version>/`` and the ``production`` pointer.
- ``training.train``: the end-to-end pipeline behind ``featurestore train``.
"""

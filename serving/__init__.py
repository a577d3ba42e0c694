"""serving: what a model reads at decision time.

``serving.scorer`` reads the latest feature rows of a model's views from the online store
(``featurestore.online``) and scores them with the model's ONNX graph; ``serving.signals`` turns
scores into signed signals, ``serving.audit`` keeps them, ``serving.http`` serves all of it.
"""

"""serving: what a model reads at decision time.

``serving.online_store`` holds the latest feature row per view and symbol (SQLite, written by the
streaming flow, read by any process); ``serving.signals`` turns scores into signed signals.
"""

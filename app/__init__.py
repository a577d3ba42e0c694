"""The composition root: the command line (``app.cli``) and the demo (``app.demo``) on top of the four packages.

Layers, bottom to top: ``featurestore`` -> ``training`` -> ``serving`` -> ``streaming`` -> ``app``. A package
imports only packages below it; nothing imports ``app`` (import-linter checks both, see ``pyproject.toml``).
"""

"""Bytewax sources of closed bars, partitioned by symbol: ``replay`` (stored bars) and ``live`` (ccxt polling).

Import the one you need (``streaming.sources.replay.ReplaySource``, ``streaming.sources.live.LiveSource``):
the live source imports ccxt, which is slow to import.
"""

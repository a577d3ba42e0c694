"""Signals: a model score becomes LONG / SHORT / FLAT, a position transition, and a signed JSON record.

This is a signal-only system: nothing here sends an order (``serving.signal_service`` builds the signals,
``serving.audit`` keeps them). A signal is JSON with an ISO-8601 UTC
timestamp, the symbol, side, score, model name and version, feature view versions and the feature
values used, signed with HMAC-SHA256 over a canonical serialization (sorted keys, no whitespace,
``signature`` excluded). The key comes from an environment variable and is never logged or written.

>>> thresholds = Thresholds(long_above=0.001, short_below=-0.001)
>>> side_for(0.002, thresholds), side_for(-0.0005, thresholds)
('LONG', 'FLAT')
>>> transition("SHORT", "LONG", size=1.0)
Transition(action='BUY', quantity=2.0, position_after=1.0)
>>> signed = sign_signal({"symbol": "BTC/USDT", "side": "LONG", "score": 0.002}, key=b"k")
>>> verify_signal(signed, key=b"k")
True
>>> verify_signal({**signed, "score": 0.003}, key=b"k")
False
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Literal

from featurestore.errors import FeatureStoreError

__all__ = [
    "SIGNING_KEY_ENV",
    "Side",
    "Thresholds",
    "Transition",
    "canonical_bytes",
    "json_number",
    "side_for",
    "sign_signal",
    "signing_key",
    "transition",
    "verify_signal",
]

Side = Literal["LONG", "SHORT", "FLAT"]
SIGNING_KEY_ENV = "FEATURESTORE_SIGNING_KEY"
_POSITION = {"LONG": 1.0, "SHORT": -1.0, "FLAT": 0.0}


@dataclass(frozen=True)
class Thresholds:
    """LONG when the score is above ``long_above``, SHORT when below ``short_below``, else FLAT."""

    long_above: float = 0.0
    short_below: float = 0.0

    def __post_init__(self) -> None:
        if not self.short_below <= self.long_above:
            raise FeatureStoreError(f"thresholds overlap: short_below={self.short_below} > long_above={self.long_above}")


def side_for(score: float, thresholds: Thresholds) -> Side:
    """The side a score asks for; a NaN score is FLAT (no opinion is never a position)."""
    if math.isnan(score):
        return "FLAT"
    if score > thresholds.long_above:
        return "LONG"
    if score < thresholds.short_below:
        return "SHORT"
    return "FLAT"


@dataclass(frozen=True)
class Transition:
    """What moving from one side to another means, in units of ``size``: never sent anywhere."""

    action: Literal["BUY", "SELL", "HOLD"]
    quantity: float
    position_after: float


def transition(current: Side, target: Side, *, size: float = 1.0) -> Transition:
    """The position-transition table: flat->long buys size, short->long buys size + size (cover and
    reverse), the same side holds, a move to FLAT closes whatever is open.

    >>> [transition(a, b).action for a, b in [("FLAT", "LONG"), ("LONG", "LONG"), ("LONG", "FLAT"), ("LONG", "SHORT")]]
    ['BUY', 'HOLD', 'SELL', 'SELL']
    """
    if size <= 0 or not math.isfinite(size):
        raise FeatureStoreError(f"position size must be a positive number, got {size}")
    before, after = _POSITION[current] * size, _POSITION[target] * size
    change = after - before
    if change == 0:
        return Transition("HOLD", 0.0, after)
    return Transition("BUY" if change > 0 else "SELL", abs(change), after)


def signing_key(environ: dict[str, str] | None = None) -> bytes:
    """The HMAC key from ``$FEATURESTORE_SIGNING_KEY``; refuses to sign without one."""
    key = (os.environ if environ is None else environ).get(SIGNING_KEY_ENV, "")
    if not key:
        raise FeatureStoreError(f"set {SIGNING_KEY_ENV} to sign or verify signals (the key is never written anywhere)")
    return key.encode()


def json_number(value: float | None) -> float | str | None:
    """A value as a signal holds it: finite floats as they are, None and NaN as null, infinities as
    ``"inf"`` / ``"-inf"`` (JSON has no NaN or infinity, and a signal must stay valid JSON).

    >>> [json_number(v) for v in (0.5, None, float("nan"), float("-inf"))]
    [0.5, None, None, '-inf']
    """
    if value is None or value != value:
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def canonical_bytes(signal: dict[str, Any]) -> bytes:
    """The signed form: every field but ``signature``, sorted keys, no whitespace, NaN refused."""
    body = {k: v for k, v in signal.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def sign_signal(signal: dict[str, Any], *, key: bytes) -> dict[str, Any]:
    """A copy of ``signal`` with ``signature = hex(HMAC-SHA256(key, canonical_bytes))``."""
    return {**signal, "signature": hmac.new(key, canonical_bytes(signal), hashlib.sha256).hexdigest()}


def verify_signal(signal: dict[str, Any], *, key: bytes) -> bool:
    """True when the signature matches every other field (constant-time comparison)."""
    signature = signal.get("signature")
    if not isinstance(signature, str):
        return False
    try:
        expected = hmac.new(key, canonical_bytes(signal), hashlib.sha256).hexdigest()
    except ValueError:  # a field no canonical form can hold (NaN) was not signed by us
        return False
    return hmac.compare_digest(expected, signature)

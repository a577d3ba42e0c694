"""Where each symbol is computed: shared out evenly over the workers of a cluster, its bars read on the same process.

A Bytewax keyed step sends a key to worker ``SipHash-1-3(key bytes + 0xFF) % workers`` (Rust's
``DefaultHasher`` over the key's ``str``; ``route`` below computes it, and a test checks it against Bytewax).
Keyed by the bare symbol, 20 symbols land 13 and 7 on two workers, and each symbol's bars, read by a source
partition that Bytewax places on any process, cross to another process pickled half of the time. So the
flow keys each symbol by a *routing key*: the symbol, or the symbol with a ``#n`` suffix, the first that
routes to the worker ``share`` gives it (round robin over the symbols in order), and every process's source
lists only the symbols its own workers compute. Results never depend on this (any key gives the same rows;
a source may list any symbols as long as every symbol is listed once): if Bytewax routed otherwise, work
would only be less even and cross processes again.

>>> placement = Placement(process_id=1, processes=2)
>>> keys = placement.keys(["BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT"])
>>> [route(key, 2) for key in keys.values()], placement.local(keys)
([0, 1, 0, 1], ['ETH/USDT', 'XRP/USDT'])
>>> Placement().keys(["BTC/USDT"])  # one worker: every symbol is its own key
{'BTC/USDT': 'BTC/USDT'}
>>> share([("v", "A", 5), ("v", "B", 4), ("v", "C", 3), ("v", "D", 1)], 2)
[[('v', 'A'), ('v', 'D')], [('v', 'B'), ('v', 'C')]]
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Placement", "route", "share"]

_MASK = 0xFFFFFFFFFFFFFFFF
K = TypeVar("K", bound=Hashable)


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & _MASK


def _siphash13(data: bytes) -> int:
    """SipHash-1-3 with the zero key (Rust's ``DefaultHasher::default()``)."""
    v0, v1, v2, v3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _MASK
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _MASK
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _MASK
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _MASK
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    whole = len(data) - len(data) % 8
    for start in range(0, whole, 8):
        word = int.from_bytes(data[start:start + 8], "little")
        v3 ^= word
        rounds(1)
        v0 ^= word
    last = ((len(data) & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= last
    rounds(1)
    v0 ^= last
    v2 ^= 0xFF
    rounds(3)
    return v0 ^ v1 ^ v2 ^ v3


def route(key: str, workers: int) -> int:
    """The worker (of ``workers`` in the whole cluster) to which a Bytewax keyed step sends ``key``."""
    return _siphash13(key.encode() + b"\xff") % workers


def share(work: Sequence[tuple[str, K, int]], workers: int) -> list[list[tuple[str, K]]]:
    """(group, item, size) triples shared out over ``workers``: largest first, each to the least loaded worker
    (ties: the lowest index), the same on every process."""
    shares: list[list[tuple[str, K]]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for group, item, size in sorted(work, key=lambda w: (-w[2], w[0], w[1])):
        worker = min(range(workers), key=lambda k: (loads[k], k))
        shares[worker].append((group, item))
        loads[worker] += size
    return shares


@dataclass(frozen=True)
class Placement:
    """This process's place in the cluster: process ``process_id`` of ``processes``, each running ``workers``
    worker threads (Bytewax numbers them process by process)."""

    process_id: int = 0
    processes: int = 1
    workers: int = 1

    def keys(self, symbols: Sequence[str]) -> dict[str, str]:
        """Symbol -> the key that routes it to its worker, the symbols dealt out in turn over every worker."""
        total = self.processes * self.workers
        keys = {}
        for worker, symbol in zip(itertools.cycle(range(total)), symbols, strict=False):
            candidates = itertools.chain([symbol], (f"{symbol}#{n}" for n in itertools.count(1)))
            keys[symbol] = next(key for key in candidates if route(key, total) == worker)
        return keys

    def local(self, keys: dict[str, str]) -> list[str]:
        """The symbols whose keys route to this process's workers: what its sources read."""
        total, first = self.processes * self.workers, self.process_id * self.workers
        return [symbol for symbol, key in keys.items() if first <= route(key, total) < first + self.workers]

"""Exchange ingestion end to end: a real ccxt binance client talking to a local Binance-like HTTP server.

The server (``LocalBinance``) answers Binance's spot REST wire format for ``/api/v3/exchangeInfo`` and
``/api/v3/klines`` from a deterministic market held in memory, keeps a log of every request, and records
any other path as unexpected (checked after each test), so no request can leave 127.0.0.1 unnoticed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import duckdb
import pytest

from featurestore.bars import BAR_COLUMNS
from featurestore.errors import ExchangeError, FeatureStoreError
from featurestore.ingest import ingest_exchange
from featurestore.sources.exchange import fetch_closed_bars, make_client
from featurestore.store import Store

T0 = 1_704_067_200_000  # 2024-01-01T00:00Z, when both markets open
HOUR = 3_600_000
INTERVALS = {"1m": 60_000, "1h": HOUR}
SPOT = {"BTCUSDT": ("BTC", 42_000.0), "ETHUSDT": ("ETH", 2_300.0)}


def ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _symbol_info(symbol: str, base: str) -> dict:
    """One entry of ``exchangeInfo.symbols`` in Binance's field layout (values trimmed, layout kept)."""
    return {
        "symbol": symbol, "status": "TRADING", "baseAsset": base, "baseAssetPrecision": 8,
        "quoteAsset": "USDT", "quotePrecision": 8, "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True, "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True, "cancelReplaceAllowed": True, "amendAllowed": True,
        "isSpotTradingAllowed": True, "isMarginTradingAllowed": True,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
             "tickSize": "0.01000000"},
            {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
            {"filterType": "ICEBERG_PARTS", "limit": 10},
            {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "85.00000000",
             "stepSize": "0.00000000"},
            {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
        ],
        "permissions": [], "permissionSets": [["SPOT", "MARGIN"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


class LocalBinance:
    """A deterministic Binance spot market on 127.0.0.1; the test controls its clock and its faults.

    Bars exist for every open time from ``T0`` up to ``now_ms`` (the one containing ``now_ms`` is in
    progress and carries partial values), or up to ``halted_at`` for a symbol whose trading stopped.
    """

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.halted_at: dict[str, int] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.unexpected: list[str] = []
        self.faults: deque[str] = deque()  # one per klines request: "429", "503", "503-html", "stall"
        self.fail_from: int | None = None  # klines request index from which every request fails
        self.fail_with = "503"
        self.released = threading.Event()  # a stalled answer waits for this (``close`` sets it), 30 s at most
        self.duplicate_rows = False
        self._klines_seen = 0
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def kline(self, symbol: str, open_ms: int, step: int) -> list:
        """The row Binance would send for this open time, as of the server's ``now_ms``."""
        i = (open_ms - T0) // step
        open_ = SPOT[symbol][1] + 3.25 * (i % 7) + 0.5 * i
        close = open_ + (1.5 if i % 3 else -2.25)
        high, low, volume = max(open_, close) + 0.75, min(open_, close) - 1.25, 10.0 + 0.125 * i
        if open_ms + step > self.now_ms:  # still in progress: partial values
            close, high, low, volume = open_ + 0.01, open_ + 0.25, open_ - 0.25, 0.5
        prices = [f"{v:.8f}" for v in (open_, high, low, close, volume)]
        return [open_ms, *prices, open_ms + step - 1, f"{volume * close:.8f}", 100 + i, f"{volume / 2:.8f}",
                f"{volume * close / 2:.8f}", "0"]

    def closed_bars(self, symbol: str, step: int = HOUR, since_ms: int = T0, until_ms: int | None = None) -> list:
        """What the store should hold: closed bars as (symbol, ts, open, high, low, close, volume)."""
        end = self.halted_at.get(symbol, self.now_ms + 1)
        out = []
        for ts in range(since_ms, end, step):
            if ts + step <= self.now_ms and (until_ms is None or ts < until_ms):
                row = self.kline(symbol, ts, step)
                out.append((f"{SPOT[symbol][0]}/USDT", ms_to_dt(ts), *(float(v) for v in row[1:6])))
        return out

    def klines_starts(self) -> list[int]:
        return [int(q["startTime"]) for path, q in self.requests if path == "/api/v3/klines"]

    def _klines(self, query: dict[str, str]) -> tuple[int, object]:
        symbol, interval = query.get("symbol"), query.get("interval")
        if symbol not in SPOT:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        if interval not in INTERVALS:
            return 400, {"code": -1120, "msg": "Invalid interval."}
        step, limit = INTERVALS[interval], int(query.get("limit", 500))
        if not 1 <= limit <= 1000:
            return 400, {"code": -1100, "msg": "Illegal characters found in parameter 'limit'."}
        first = max(T0, -(-int(query.get("startTime", T0)) // step) * step)
        last = min(self.now_ms, int(query.get("endTime", self.now_ms)), self.halted_at.get(symbol, self.now_ms) - 1)
        rows = [self.kline(symbol, ts, step) for ts in range(first, last + 1, step)][:limit]
        if self.duplicate_rows and rows:  # a misbehaving exchange: a row twice in the page
            rows.insert(1, rows[0])
        return 200, rows

    def _respond(self, path: str, query: dict[str, str]) -> tuple[int, object, bool]:
        """(status, JSON body, whether to stall until ``released`` before answering)."""
        with self._lock:
            self.requests.append((path, query))
            if path in ("/fapi/v1/exchangeInfo", "/dapi/v1/exchangeInfo"):  # no futures markets (ccxt asks)
                return 200, {"timezone": "UTC", "serverTime": self.now_ms, "rateLimits": [], "exchangeFilters": [],
                             "symbols": []}, False
            if path == "/api/v3/exchangeInfo":
                return 200, {"timezone": "UTC", "serverTime": self.now_ms, "rateLimits": [
                    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                ], "exchangeFilters": [], "symbols": [_symbol_info(s, base) for s, (base, _) in SPOT.items()]}, False
            if path != "/api/v3/klines":
                self.unexpected.append(path)
                return 404, {"code": -1, "msg": f"unexpected path {path}"}, False
            index, self._klines_seen = self._klines_seen, self._klines_seen + 1
            fault = self.faults.popleft() if self.faults else None
            if self.fail_from is not None and index >= self.fail_from:
                fault = self.fail_with
            if fault == "429":
                return 429, {"code": -1003, "msg": "Too many requests"}, False
            if fault == "503":  # Binance's JSON error for an internal failure
                return 503, {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}, False
            if fault == "503-html":  # what a load balancer in front of the API sends
                return 503, "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>", False
            status, body = self._klines(query)
            return status, body, fault == "stall"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                status, body, stall = server._respond(url.path, query)
                if stall:
                    server.released.wait(timeout=30)
                payload = (body if isinstance(body, str) else json.dumps(body)).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json;charset=UTF-8")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def server():
    srv = LocalBinance(now_ms=T0 + 24 * HOUR)
    yield srv
    srv.close()
    assert srv.unexpected == [], f"ccxt requested paths the local exchange does not serve: {srv.unexpected}"


def local_client(server: LocalBinance, timeout_ms: int = 5_000):
    """The real ccxt binance client the CLI builds (``make_client``), every API URL pointing at ``server``."""
    client = make_client("binance", timeout=timeout_ms, api_url=server.base)
    assert all(url.startswith(server.base + "/") for url in client.urls["api"].values())
    client.session.trust_env = False  # ignore any proxy settings in the environment
    return client


class Sleeps(list):
    """An injected ``sleep`` that records the requested delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def stored(store: Store, exchange: str = "binance", timeframe: str = "1h") -> list[tuple]:
    return store.scan_bars(exchange, timeframe).select(BAR_COLUMNS).collect().rows()


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- paging


def test_paging_ends_on_an_empty_page_at_a_page_edge(server, tmp_path):
    server.halted_at["ETHUSDT"] = T0 + 20 * HOUR  # 20 bars = exactly 4 pages of 5, then nothing
    server.now_ms = T0 + 40 * HOUR
    store = Store(tmp_path)
    new = ingest_exchange(store, local_client(server), ["ETH/USDT"], "1h", since=ms_to_dt(T0),
                          now=ms_to_dt(server.now_ms), page_limit=5, progress=False)
    assert new == {"ETH/USDT": 20}
    assert stored(store) == server.closed_bars("ETHUSDT")
    assert len(server.closed_bars("ETHUSDT")) == 20
    assert server.klines_starts() == [T0 + k * 5 * HOUR for k in range(5)]  # the 5th page came back empty
    assert all(q["limit"] == "5" and q["interval"] == "1h" for p, q in server.requests if p == "/api/v3/klines")


def test_paging_stops_when_until_falls_on_a_page_edge(server, tmp_path):
    store = Store(tmp_path)
    new = ingest_exchange(store, local_client(server), ["BTC/USDT", "ETH/USDT"], "1h", since=ms_to_dt(T0),
                          until=ms_to_dt(T0 + 10 * HOUR), now=ms_to_dt(server.now_ms), page_limit=5,
                          progress=False)
    assert new == {"BTC/USDT": 10, "ETH/USDT": 10}
    until = T0 + 10 * HOUR
    assert stored(store) == server.closed_bars("BTCUSDT", until_ms=until) + server.closed_bars("ETHUSDT", until_ms=until)
    assert server.klines_starts() == [T0, T0 + 5 * HOUR] * 2  # no request past until
    assert [p for p, _ in server.requests].count("/api/v3/exchangeInfo") == 1


def test_in_progress_candle_is_dropped(server, tmp_path):
    server.now_ms = T0 + 12 * HOUR + 30 * 60_000  # inside bar 12
    store = Store(tmp_path)
    new = ingest_exchange(store, local_client(server), ["BTC/USDT"], "1h", since=ms_to_dt(T0),
                          now=ms_to_dt(server.now_ms), page_limit=5, progress=False)
    rows = stored(store)
    assert new == {"BTC/USDT": 12}
    assert rows == server.closed_bars("BTCUSDT")
    assert rows[-1][1] == ms_to_dt(T0 + 11 * HOUR)
    assert server.klines_starts() == [T0, T0 + 5 * HOUR, T0 + 10 * HOUR]  # the last page held bars 10, 11, 12


def test_duplicate_rows_from_the_exchange_never_reach_the_store(server, tmp_path):
    server.duplicate_rows = True
    client = local_client(server)
    pages = list(fetch_closed_bars(client, "BTC/USDT", "1h", since_ms=T0, until_ms=T0 + 12 * HOUR,
                                   now_ms=server.now_ms, page_limit=4))
    # ccxt passes the duplicate through and cuts each page to `limit` rows (4 = 3 bars + 1 duplicate);
    # the duplicate is dropped and the next page starts right after the newest bar returned
    assert [p.height for p in pages] == [3, 3, 3, 3]
    assert server.klines_starts() == [T0, T0 + 3 * HOUR, T0 + 6 * HOUR, T0 + 9 * HOUR]
    store = Store(tmp_path)
    new = ingest_exchange(store, client, ["BTC/USDT"], "1h", since=ms_to_dt(T0), until=ms_to_dt(T0 + 12 * HOUR),
                          now=ms_to_dt(server.now_ms), page_limit=4, progress=False)
    assert new == {"BTC/USDT": 12}
    assert stored(store) == server.closed_bars("BTCUSDT", until_ms=T0 + 12 * HOUR)


# ---------------------------------------------------------------------------------------------- resume


def test_resume_requests_only_new_bars_and_matches_a_single_full_ingest(server, tmp_path):
    client = local_client(server)
    store = Store(tmp_path / "resumed")
    server.now_ms = T0 + 12 * HOUR + 30 * 60_000
    first = ingest_exchange(store, client, ["BTC/USDT"], "1h", since=ms_to_dt(T0), now=ms_to_dt(server.now_ms),
                            page_limit=5, progress=False)
    assert first == {"BTC/USDT": 12}

    server.now_ms = T0 + 30 * HOUR + 30 * 60_000  # bar 12 has closed with its final values
    server.requests.clear()
    second = ingest_exchange(store, client, ["BTC/USDT"], "1h", since=ms_to_dt(T0), now=ms_to_dt(server.now_ms),
                             page_limit=5, progress=False)
    assert second == {"BTC/USDT": 18}
    assert server.klines_starts() == [T0 + 12 * HOUR, T0 + 17 * HOUR, T0 + 22 * HOUR, T0 + 27 * HOUR]

    full = Store(tmp_path / "full")
    ingest_exchange(full, client, ["BTC/USDT"], "1h", since=ms_to_dt(T0), now=ms_to_dt(server.now_ms),
                    page_limit=5, progress=False)
    assert stored(store) == stored(full) == server.closed_bars("BTCUSDT")

    before = snapshot(store.root)
    server.requests.clear()
    again = ingest_exchange(store, client, ["BTC/USDT"], "1h", since=ms_to_dt(T0), now=ms_to_dt(server.now_ms),
                            page_limit=5, progress=False)
    assert again == {"BTC/USDT": 0}
    assert server.klines_starts() == []  # nothing new can have closed: no request at all
    assert snapshot(store.root) == before


# ---------------------------------------------------------------------------------------------- failures


def test_rate_limited_requests_are_retried_with_exponential_backoff(server, tmp_path):
    server.faults.extend(["429", "429"])
    sleeps = Sleeps()
    store = Store(tmp_path)
    new = ingest_exchange(store, local_client(server), ["BTC/USDT"], "1h", since=ms_to_dt(T0),
                          now=ms_to_dt(server.now_ms), page_limit=10, backoff_s=0.5, sleep=sleeps, progress=False)
    assert sleeps == [0.5, 1.0]
    assert new == {"BTC/USDT": 24}
    assert stored(store) == server.closed_bars("BTCUSDT")
    assert server.klines_starts()[:3] == [T0, T0, T0]  # the same page, asked three times


def test_a_request_timeout_is_retried(server, tmp_path):
    server.faults.append("stall")  # the first klines answer waits until the test ends: only a timeout ends it
    sleeps = Sleeps()
    store = Store(tmp_path)
    new = ingest_exchange(store, local_client(server, timeout_ms=200), ["BTC/USDT"], "1h", since=ms_to_dt(T0),
                          now=ms_to_dt(server.now_ms), page_limit=1000, sleep=sleeps, progress=False)
    assert sleeps == [1.0]  # one retry, after the first backoff
    assert server.klines_starts() == [T0, T0]  # the same page asked twice: the stalled one was given up on
    assert new == {"BTC/USDT": 24}
    assert stored(store) == server.closed_bars("BTCUSDT")


@pytest.mark.parametrize(("fault", "error_name", "detail"), [
    ("503", "OperationFailed", '"code": -1001'),  # ccxt's message is the body, without the status
    ("503-html", "ExchangeNotAvailable", "503 Service Unavailable"),
    ("429", "DDoSProtection", "429 Too Many Requests"),
])
def test_persistent_failure_raises_and_keeps_only_flushed_batches(server, tmp_path, fault, error_name, detail):
    server.fail_from, server.fail_with = 3, fault  # pages 0-2 answer, page 3 (bars 15-19) never does
    sleeps = Sleeps()
    store = Store(tmp_path)
    client = local_client(server)
    with pytest.raises(ExchangeError) as info:
        ingest_exchange(store, client, ["BTC/USDT"], "1h", since=ms_to_dt(T0), now=ms_to_dt(server.now_ms),
                        page_limit=5, flush_every=10, max_retries=3, sleep=sleeps, progress=False)
    message = str(info.value)
    assert "binance" in message and "BTC/USDT" in message and "2024-01-01T15:00:00+00:00" in message
    assert "after 4 attempts" in message and f"last error: {error_name}" in message and detail in message
    assert "10 new BTC/USDT bars were stored before the failure" in message
    assert sleeps == [1.0, 2.0, 4.0]
    # bars 0-9 were flushed; bars 10-14 were fetched but not yet flushed, so they are not stored
    assert stored(store) == server.closed_bars("BTCUSDT", until_ms=T0 + 10 * HOUR)
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{store.bars_root}/**/*.parquet')").fetchall()
    assert count == [(10,)]

    server.fail_from = None  # the exchange recovers: a re-run continues from bar 10
    server.requests.clear()
    assert ingest_exchange(store, client, ["BTC/USDT"], "1h", since=ms_to_dt(T0), now=ms_to_dt(server.now_ms),
                           page_limit=5, progress=False) == {"BTC/USDT": 14}
    assert server.klines_starts()[0] == T0 + 10 * HOUR
    assert stored(store) == server.closed_bars("BTCUSDT")


def test_unknown_symbol_fails_at_once_without_retrying(server, tmp_path):
    sleeps = Sleeps()
    with pytest.raises(ExchangeError, match=r"binance: fetching DOGE/USDT 1h bars .* BadSymbol"):
        ingest_exchange(Store(tmp_path), local_client(server), ["DOGE/USDT"], "1h", since=ms_to_dt(T0),
                        now=ms_to_dt(server.now_ms), sleep=sleeps, progress=False)
    assert sleeps == []
    assert server.klines_starts() == []  # ccxt knew from exchangeInfo that the market does not exist


# ---------------------------------------------------------------------------------------------- clients, CLI


def test_make_client_refuses_unknown_ids_and_exchanges_without_ohlcv():
    with pytest.raises(FeatureStoreError, match=r"unknown ccxt exchange id 'krakn'; did you mean 'kraken'"):
        make_client("krakn")
    with pytest.raises(FeatureStoreError, match=r"'bitflyer' has no OHLCV endpoint"):
        make_client("bitflyer")
    client = make_client("Binance", timeout=1_234)
    assert (client.id, client.enableRateLimit, client.timeout) == ("binance", True, 1_234)


def test_cli_suggests_the_exchange_id_for_a_typo(tmp_path):
    featurestore = Path(sys.executable).parent / "featurestore"
    result = subprocess.run(
        [str(featurestore), "ingest", "--source", "ccxt", "--exchange", "binanse", "--symbols", "BTC/USDT",
         "--timeframe", "1h", "--since", "2024-01-01", "--store", str(tmp_path / "store")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "unknown ccxt exchange id 'binanse'; did you mean 'binance'" in result.stderr
    assert not (tmp_path / "store").exists() or snapshot(tmp_path / "store") == {}

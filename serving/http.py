"""The HTTP service: Starlette on uvicorn (uvloop, httptools), one process, 127.0.0.1 by default.

Endpoints (``serving.openapi`` describes them at ``/openapi.json``):

- ``GET /features/{view}/{symbol}``: the latest online row. Symbols contain '/': send it as is
  (``/features/research/BTC/USDT``, a path converter takes the rest of the path) or encoded
  (``BTC%2FUSDT``), or use ``GET /features/{view}?symbol=BTC/USDT``.
- ``POST /score`` with ``{"symbols": [...]}`` (1 to ``max_batch`` distinct symbols): one signed signal per
  symbol, scored in one batch and appended to the audit log. Refusals: 404 ``missing_features`` (no
  online row, or a null the model never saw missing in training), 409 ``version_skew``,
  ``stale_features``, ``future_features`` (a row newer than the server's clock) or ``non_finite_features``
  (an infinite value), 422 (bad body or too
  many symbols), 413 (body over ``max_body_bytes``), 415 (not ``application/json``), 400 (not JSON).
- ``GET /health``: the model loaded, and every online row's age and version against the model's; 200 when
  every row is fresh and of the model's versions, else 503 with ``"status": "degraded"`` (a load balancer
  or probe reads the code).
- ``GET /metrics``: Prometheus text format (``serving.metrics``), with the monitoring gauges when the app
  is given a function that samples them (``gauges``).
- ``GET /docs``: the OpenAPI document as a self-contained HTML page (``serving.api_docs``: no script, no CDN).
- Extra routes the caller adds (``routes``: the dashboard under ``/ui``, ``app.dashboard``), matched after
  these.

Without a model (``create_app(None, online=...)``, ``featurestore serve --features-only``) the service
serves features alone: no ``/score``, no signing key, and ``/health`` lists the online rows of the views
it is given.

Every error is JSON ``{"error": code, "message": text}``. With a token configured every endpoint but
``/openapi.json`` and ``/docs`` needs ``Authorization: Bearer <token>`` (compared in constant time).

``bind`` checks the port (1..65535) and binds it before the caller announces anything; ``serve`` runs the
app on that socket.

Handlers run on the event loop itself: reading the online store and scoring take tens of microseconds,
less than handing them to a thread would cost. The audit log is appended on every request and fsynced
once a second in a background thread (see ``serving.audit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import hmac
import json
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from featurestore.errors import (
    FeatureStoreError,
    FutureFeaturesError,
    MissingFeaturesError,
    NonFiniteFeaturesError,
    StaleFeaturesError,
    VersionSkewError,
)
from featurestore.online import OnlineStore
from serving.api_docs import docs_html
from serving.metrics import GaugeSample, HttpMetrics
from serving.openapi import MAX_SYMBOL_LENGTH, openapi_schema
from serving.signal_service import SignalService
from serving.signals import json_number

__all__ = ["bind", "create_app", "serve"]

_PUBLIC = ("/openapi.json", "/docs")  # the contract is public, the data is not

_log = logging.getLogger(__name__)
_REFUSALS = ((MissingFeaturesError, 404, "missing_features"), (VersionSkewError, 409, "version_skew"),
             (StaleFeaturesError, 409, "stale_features"), (FutureFeaturesError, 409, "future_features"),
             (NonFiniteFeaturesError, 409, "non_finite_features"))


class _Refusal(Exception):
    """A request the service refuses: an HTTP status, a stable code and a message (answered as JSON)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"error": code, "message": message}, status, headers)


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _Refusal(413, "too_large", f"the body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refusal(413, "too_large", f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _utf8(text: str) -> bool:
    """False for strings JSON can carry but UTF-8 cannot (lone surrogates, e.g. "\\ud800")."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _symbols(payload: Any, max_batch: int) -> list[str]:
    if not isinstance(payload, dict) or set(payload) != {"symbols"}:
        raise _Refusal(422, "invalid_body", 'the body must be {"symbols": ["BTC/USDT", ...]} and nothing else')
    symbols = payload["symbols"]
    if not isinstance(symbols, list) or not symbols:
        raise _Refusal(422, "invalid_body", '"symbols" must be a non-empty list of symbols')
    if len(symbols) > max_batch:
        raise _Refusal(422, "batch_too_large", f"{len(symbols)} symbols; at most {max_batch} per request")
    bad = [s for s in symbols if not isinstance(s, str) or not 1 <= len(s) <= MAX_SYMBOL_LENGTH or not _utf8(s)]
    if bad:
        raise _Refusal(422, "invalid_body", f"symbols must be text of 1 to {MAX_SYMBOL_LENGTH} characters; "
                                            f"got {json.dumps(bad[0])[:120]}")
    if len(set(symbols)) != len(symbols):
        raise _Refusal(422, "invalid_body", "symbols must be distinct")
    return symbols


class _Edge:
    """Outermost ASGI layer: bearer-token check, latency and counts per route, last-resort error logging."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, token: str | None) -> None:
        self.app, self.metrics = app, metrics
        self._expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self._expected is not None and scope["path"] not in _PUBLIC and not hmac.compare_digest(
                    dict(scope["headers"]).get(b"authorization", b""), self._expected):
                response = _error(401, "unauthorized", "send Authorization: Bearer <token>",
                                  {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        except Exception:  # answered 500 by Starlette's error middleware and logged by ``internal``: keep serving
            pass
        finally:
            route = scope.get("route")
            self.metrics.observe(scope["method"], route.path if route is not None else "other", status,
                                 time.perf_counter() - started)


def create_app(service: SignalService | None, *, clock: Callable[[], datetime], online: OnlineStore | None = None,
               views: Sequence[str] = (), token: str | None = None, max_batch: int = 256,
               max_body_bytes: int = 1 << 20, sync_interval_s: float = 1.0, routes: Sequence[BaseRoute] = (),
               gauges: Callable[[], Iterable[GaugeSample]] | None = None) -> ASGIApp:
    """The ASGI app serving ``service``; ``clock()`` is the time scoring and freshness are measured at. With
    ``service=None`` it serves the features of ``online`` alone, ``/health`` listing the rows of ``views``.
    ``routes`` are served after the API's; ``gauges()`` samples the monitoring gauges of ``/metrics``."""
    if (service is None) == (online is None):
        raise FeatureStoreError("serve either a signal service (its scorer's online store) or an online store alone")
    metrics = HttpMetrics()
    if gauges is not None:
        metrics.add_monitor(gauges)
    scorer = service.scorer if service is not None else None
    online = scorer.online if scorer is not None else online
    schema = openapi_schema(max_batch=max_batch, auth=token is not None, scoring=service is not None)
    page = docs_html(schema)

    def row_json(view: str, symbol: str) -> Response:
        row = online.latest(view, symbol)
        if row is None:
            known = (f"the model uses views {list(scorer.model.view_versions)}" if scorer is not None
                     else f"views: {list(views)}")
            raise _Refusal(404, "not_found", f"no online row for view {view!r} and symbol {symbol!r}; {known}")
        return _json({"view": row.view, "symbol": row.symbol, "ts": row.ts.isoformat(),
                      "view_version": row.view_version, "updated_at": row.updated_at.isoformat(),
                      "features": {k: json_number(v) for k, v in row.features.items()}})

    async def features(request: Request) -> Response:
        return row_json(request.path_params["view"], request.path_params["symbol"])

    async def features_by_query(request: Request) -> Response:
        if "symbol" not in request.query_params:
            raise _Refusal(422, "invalid_query", "give the symbol: /features/{view}?symbol=BTC/USDT")
        return row_json(request.path_params["view"], request.query_params["symbol"])

    async def score(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise _Refusal(415, "unsupported_media_type", "send the body as Content-Type: application/json")
        body = await _body(request, max_body_bytes)
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            raise _Refusal(400, "not_json", 'the body is not JSON; send {"symbols": ["BTC/USDT", ...]}') from None
        symbols = _symbols(payload, max_batch)
        try:
            signals = service.signals(symbols, now=clock())
        except FeatureStoreError as exc:
            status, code = next(((s, c) for kind, s, c in _REFUSALS if isinstance(exc, kind)), (422, "refused"))
            metrics.refusals.labels(code).inc()
            raise _Refusal(status, code, str(exc)) from None
        for signed in signals:
            metrics.signals[signed["side"]].inc()
        return _json({"signals": signals})

    async def health(request: Request) -> Response:
        now = clock()
        if scorer is None:  # features alone: nothing to be fresh for, the online store answering is health
            return _json({"status": "ok", "now": now.isoformat(), "model": None, "views": {view: [
                {"symbol": row.symbol, "ts": row.ts.isoformat(), "age_seconds": (now - row.ts).total_seconds(),
                 "view_version": row.view_version} for row in online.rows(view)] for view in views}})
        rows_by_view = scorer.freshness(now=now)
        rows = [row for view_rows in rows_by_view.values() for row in view_rows]
        ok = all(rows_by_view.values()) and all(row["fresh"] and row["version_matches"] for row in rows)
        model = scorer.model
        return _json({"status": "ok" if ok else "degraded", "now": now.isoformat(), "views": rows_by_view, "model": {
            "name": model.name, "version": model.version, "kind": model.kind, "views": model.view_versions,
            "inputs": len(model.feature_names), "input_dtype": model.dtype,
            "thresholds": {"long_above": service.thresholds.long_above, "short_below": service.thresholds.short_below}}},
            200 if ok else 503)

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def openapi(request: Request) -> Response:
        return _json(schema)

    async def docs(request: Request) -> Response:
        return HTMLResponse(page)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Refusal)
        return _error(exc.status, exc.code, exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return _error(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}", exc.headers)

    async def internal(request: Request, exc: Exception) -> Response:
        _log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return _error(500, "internal", "unexpected server error (logged)")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if service is None:
            yield
            return

        async def sync_audit() -> None:
            while True:
                await asyncio.sleep(sync_interval_s)
                await asyncio.to_thread(service.audit.sync)

        task = asyncio.create_task(sync_audit())
        try:
            yield
        finally:
            task.cancel()
            service.audit.sync()

    app = Starlette(routes=[  # matched in order: the busiest first
        *([Route("/score", score, methods=["POST"])] if service is not None else []),
        Route("/features/{view}/{symbol:path}", features, methods=["GET"]),
        Route("/features/{view}", features_by_query, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        *routes,
    ], exception_handlers={_Refusal: api_error, HTTPException: http_error, Exception: internal}, lifespan=lifespan)
    app.router.redirect_slashes = False
    return _Edge(app, metrics, token)


def bind(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, or a ``FeatureStoreError`` saying why not (a port outside 1..65535,
    an address this machine does not have, a port in use): bound before anything is announced, so what is
    announced is what listens.

    >>> bind("127.0.0.1", 99999)
    Traceback (most recent call last):
    ...
    featurestore.errors.FeatureStoreError: port 99999 is not a TCP port: give one in 1..65535
    """
    if not 1 <= port <= 65535:
        raise FeatureStoreError(f"port {port} is not a TCP port: give one in 1..65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise FeatureStoreError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart over TIME_WAIT
        listener.bind(address)
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        busy = exc.errno == errno.EADDRINUSE
        raise FeatureStoreError(f"cannot listen on {host}:{port}: "
                                + ("another process is listening there; stop it or choose another --port" if busy
                                   else exc.strerror or str(exc))) from None
    return listener


def serve(app: ASGIApp, listener: socket.socket) -> None:
    """Run ``app`` on ``listener`` (from ``bind``) until SIGINT or SIGTERM, then return after a graceful
    shutdown.

    uvicorn re-raises the signal it caught once it has shut down, to the handler installed before it
    ran: a no-op here, so the caller's clean-up runs and the process exits 0. Everything loaded so far
    (libraries, model, session) is moved out of the garbage collector's reach first: a full collection
    of it takes ~50 ms here, a stall in the middle of some request.
    """
    import uvicorn

    gc.collect()
    gc.freeze()
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        config = uvicorn.Config(app, loop="uvloop", http="httptools", lifespan="on", access_log=False,
                                log_level="warning", server_header=False)
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        listener.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

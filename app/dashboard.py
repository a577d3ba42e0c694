"""The dashboard: HTML pages under ``/ui`` of ``featurestore serve``, and the monitoring gauges of ``/metrics``.

Everything is served by the app itself (no CDN, no script: tables, the model directory's PNG charts and one
stylesheet), read from the store when a page is asked for:

- ``/ui``: views (versions, stored ranges, age, online rows) and models (versions, latest monitor status);
- ``/ui/models/<name>`` (``?version=``, default production): walk-forward metrics and folds, the backtest
  beside buy-and-hold, ``equity.png`` and ``importance.png``, and from the latest ``featurestore monitor``
  report the drift table, live performance beside the backtest, freshness;
- ``/ui/signals``: the newest signals of the audit log;
- ``/ui/consistency``: the latest ``featurestore consistency`` report of each view.

The gauges (``serving.metrics.MONITOR_GAUGES``) come from the same reports and the served model's online rows.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from featurestore.errors import FeatureStoreError
from featurestore.online import connect
from serving.metrics import GaugeSample
from serving.monitoring import MonitorReport
from streaming.consistency import ConsistencyReport
from training.artifact import ModelMeta

if TYPE_CHECKING:
    from app.sdk import FeatureStore
    from serving.scorer import Scorer

__all__ = ["dashboard_routes", "gauge_samples"]

RECENT_SIGNALS = 50
_STATUS = {"OK": 0.0, "WARN": 1.0, "ALERT": 2.0, "SKIP": -1.0}
_CHARTS = ("equity.png", "importance.png")
_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
nav a { margin-right: 1.2em; } h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; } th, td { border: 1px solid #ccc; padding: 2px 8px; }
th { background: #f2f2f2; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.OK { background: #dff0d8; } .WARN { background: #fcf8e3; } .ALERT { background: #f2dede; } .SKIP { color: #888; }
img { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; } .muted { color: #777; }
"""


def _cell(value: Any) -> str:
    if value is None:
        return '<td class="n muted">-</td>'
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, float):
        return f'<td class="n">{value:.6g}</td>'
    if isinstance(value, int):
        return f'<td class="n">{value:,}</td>'
    if isinstance(value, datetime):
        return f"<td>{html.escape(value.isoformat())}</td>"
    text = str(value)
    if text in _STATUS:
        return f'<td class="{text}">{text}</td>'
    return f"<td>{html.escape(text)}</td>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, raw: int | None = None) -> str:
    """An HTML table; column ``raw`` holds markup (links), every other cell is escaped."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" if i == raw else _cell(c) for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in headers)}</tr>{body}</table>"


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)} - featurestore</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/style.css"></head><body>
<nav><a href="/ui">views and models</a><a href="/ui/signals">signals</a><a href="/ui/consistency">consistency</a></nav>
<h1>{html.escape(title)}</h1>{body}</body></html>""")


def _reports(fs: FeatureStore, pattern: str, kind: type) -> list:
    return [kind.from_json(path.read_text()) for path in sorted(fs.store.monitor_dir.glob(pattern))]


def _overview(fs: FeatureStore) -> str:
    now = fs.clock()
    views = [v for v in fs.views() if v.registered or v.rows]
    online: dict[str, list] = {}
    try:
        with connect(fs.store.online_url, readonly=True) as store:
            online = {v.view.name: store.rows(v.view.name) for v in views}
    except FeatureStoreError:
        pass
    view_rows = [(v.view.name, v.view.version, v.view.timeframe, v.rows, v.first, v.last, v.age and str(v.age),
                  v.fresh, len(online.get(v.view.name, [])),
                  max((r.ts for r in online.get(v.view.name, [])), default=None)) for v in views]
    reports = {r.model: r for r in _reports(fs, "model-*.json", MonitorReport)}
    model_rows = []
    for m in fs.models():
        report = reports.get(m.name)
        status = report.status if report is not None and report.version == m.version else None
        link = f'<a href="/ui/models/{html.escape(m.name)}?version={html.escape(m.version)}">{html.escape(m.name)}</a>'
        model_rows.append((link, m.version, m.production, m.trained_at, status))
    return (f'<p class="muted">as of {html.escape(now.isoformat())}</p><h2>Views</h2>'
            + _table(("view", "version", "timeframe", "stored rows", "first", "last", "age", "fresh",
                      "online symbols", "newest online row"), view_rows)
            + "<h2>Models</h2>" + _table(("model", "version", "production", "trained at", "latest monitor"),
                                         model_rows, raw=0))


def _monitor_section(report: MonitorReport) -> str:
    worst: dict[str, str] = {}
    order = ("SKIP", "OK", "WARN", "ALERT")
    for c in report.checks:
        if order.index(c.status) >= order.index(worst.get(c.subject, "SKIP")):
            worst[c.subject] = c.status
    drift = [(f.feature, f.drift.psi, f.drift.ks, f.drift.null_rate, f.drift.reference_null_rate, f.drift.mean,
              f.drift.reference_mean, worst.get(f.feature)) for f in report.features]
    if report.prediction is not None:
        p = report.prediction
        drift.append(("score (prediction)", p.psi, p.ks, p.null_rate, p.reference_null_rate, p.mean,
                      p.reference_mean, worst.get("score")))
    figures = []
    for label, f in (("live", report.live), ("backtest", report.backtest)):
        if f is not None:
            long, short = f.sides.get("LONG"), f.sides.get("SHORT")
            figures.append((label, f.rows, f.ic, f.hit_rate, long and long.bars, long and long.mean_return,
                            short and short.bars, short and short.mean_return, f.cost_bps))
    return (f'<h2>Monitor: <span class="{report.status}">{report.status}</span></h2>'
            f'<p>window {html.escape(report.window_start.isoformat())} .. {html.escape(report.window_end.isoformat())}, '
            f"{report.rows:,} rows from {html.escape(report.source)}; signals "
            f"{html.escape(', '.join(f'{k} {v:,}' for k, v in report.signals.items()))}; generated "
            f"{html.escape(report.generated_at.isoformat())}</p><h2>Drift against the training set</h2>"
            + _table(("input", "PSI", "KS", "null rate", "training null rate", "mean", "training mean", "status"),
                     drift)
            + "<h2>Live performance beside the backtest</h2>"
            + _table(("", "rows", "IC", "hit rate", "LONG bars", "LONG mean return", "SHORT bars",
                      "SHORT mean return", "cost bps"), figures)
            + "<h2>Freshness</h2>" + _table(("view", "symbol", "newest online row", "age (s)", "age (bars)"),
                                            [(f.view, f.symbol, f.ts, f.age_seconds, f.age_bars)
                                             for f in report.freshness])
            + "<h2>Checks not OK</h2>" + _table(("status", "check", "subject", "figure", "value", "warn", "alert",
                                                "detail"),
                                               [(c.status, c.check, c.subject, c.figure, c.value, c.warn, c.alert,
                                                 c.detail) for c in report.checks if c.status != "OK"]))


def _model(fs: FeatureStore, name: str, version: str | None) -> str:
    path = fs.model_dir(name, version=version)
    meta = ModelMeta.read(path)
    report = json.loads((path / "report.json").read_text()) if (path / "report.json").is_file() else {}
    backtest = report.get("backtest", {})
    rows = [(key, backtest.get("model", {}).get(key), backtest.get("buy_and_hold", {}).get(key))
            for key in ("total_return", "cagr", "sharpe", "max_drawdown", "win_rate", "trades")]
    charts = "".join(f'<img alt="{chart}" src="/ui/models/{html.escape(name)}/{html.escape(meta.version)}/{chart}">'
                     for chart in _CHARTS if (path / chart).is_file())
    body = (f"<p>version {html.escape(meta.version)}, {html.escape(meta.kind)}, label "
            f"{html.escape(meta.label.spec if meta.label else '-')}, {len(meta.feature_names)} inputs, trained "
            f"{html.escape(meta.trained_at.isoformat() if meta.trained_at else '-')}, threshold {meta.threshold}</p>"
            "<h2>Walk-forward metrics (out of sample)</h2>"
            + _table(("metric", "value"), [(k, v) for k, v in report.get("metrics", meta.metrics).items()
                                            if not isinstance(v, dict)])
            + _table(("train rows", "test rows", "test first", "test last", "trees"),
                     [(f["train_rows"], f["test_rows"], f["test_first"], f["test_last"], f["trees"])
                      for f in report.get("folds", [])])
            + "<h2>Backtest</h2>" + _table(("", "model", "buy and hold"), rows) + charts)
    monitor = fs.store.monitor_report_path(meta.name)
    latest = MonitorReport.from_json(monitor.read_text()) if monitor.is_file() else None
    if latest is not None and latest.version == meta.version:
        return body + _monitor_section(latest)
    return body + (f'<h2>Monitor</h2><p class="muted">no report of this version yet: featurestore monitor --model '
                   f'{html.escape(meta.name)}</p>')


def _tail_signals(path: Path, count: int) -> list[dict]:
    """The last ``count`` lines of the audit log (read from its end)."""
    if not path.is_file():
        return []
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - 4096 * count))
        lines = handle.read().splitlines()[-count:]
    found = []
    for line in reversed(lines):
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def _signals(fs: FeatureStore) -> str:
    """The live log's newest signals; the replay log's when no live signal was ever logged."""
    live = fs.store.audit_path
    log = live if live.is_file() and live.stat().st_size else fs.store.replay_audit_path
    rows = [(s.get("ts"), s.get("symbol"), s.get("model"), s.get("model_version"), s.get("side"), s.get("score"),
             s.get("action"), s.get("quantity")) for s in _tail_signals(log, RECENT_SIGNALS)]
    return (f'<p class="muted">the newest {RECENT_SIGNALS} lines of {html.escape(str(log))}</p>'
            + _table(("ts", "symbol", "model", "version", "side", "score", "action", "quantity"), rows))


def _consistency(fs: FeatureStore) -> str:
    parts = []
    for r in _reports(fs, "consistency-*.json", ConsistencyReport):
        parts.append(f'<h2>{html.escape(r.view)} v{html.escape(r.version)}: <span class="{"OK" if r.ok else "ALERT"}">'
                     f'{"consistent" if r.ok else "inconsistent"}</span></h2><p>{html.escape(r.summary())}</p>'
                     + _table(("feature", "compared", "matching", "share"),
                              [(f.feature, f.compared, f.matching, f.share) for f in r.features])
                     + _table(("first mismatches", "ts", "feature", "served", "offline"),
                              [(m.symbol, m.ts, m.feature, m.served, m.offline) for m in r.mismatches])
                     + _table(("served, never backfilled", "ts"), [(k.symbol, k.ts) for k in r.first_only_served])
                     + _table(("backfilled, never served", "ts"), [(k.symbol, k.ts) for k in r.first_only_offline]))
    return "".join(parts) or '<p class="muted">no report yet: featurestore consistency --view VIEW</p>'


def dashboard_routes(fs: FeatureStore) -> list[Route]:
    """The ``/ui`` routes over the store of ``fs`` (pages are built in a thread: the event loop keeps serving)."""

    def page(title: Callable[[Request], str], build: Callable[[Request], str]) -> Callable:
        async def handler(request: Request) -> Response:
            return _page(title(request), await asyncio.to_thread(build, request))

        return handler

    async def chart(request: Request) -> Response:
        name, version, file = (request.path_params[k] for k in ("name", "version", "file"))
        path = fs.model_dir(name, version=version) / file
        if file not in _CHARTS or not path.is_file():
            return Response(f"no chart {file}", 404, media_type="text/plain")
        return FileResponse(path, media_type="image/png")

    async def style(request: Request) -> Response:
        return Response(_CSS, media_type="text/css")

    return [
        Route("/ui", page(lambda r: "views and models", lambda r: _overview(fs)), methods=["GET"]),
        Route("/ui/style.css", style, methods=["GET"]),
        Route("/ui/signals", page(lambda r: "recent signals", lambda r: _signals(fs)), methods=["GET"]),
        Route("/ui/consistency", page(lambda r: "online/offline consistency", lambda r: _consistency(fs)),
              methods=["GET"]),
        Route("/ui/models/{name}", page(lambda r: f"model {r.path_params['name']}", lambda r: _model(
            fs, r.path_params["name"], r.query_params.get("version"))), methods=["GET"]),
        Route("/ui/models/{name}/{version}/{file}", chart, methods=["GET"]),
    ]


def gauge_samples(fs: FeatureStore, scorer: Scorer, clock: Callable[[], datetime]
                  ) -> Callable[[], list[GaugeSample]]:
    """A function giving the monitoring gauges: the latest reports' figures and the served model's freshness."""

    def samples() -> list[GaugeSample]:
        out: list[GaugeSample] = []
        for r in _reports(fs, "model-*.json", MonitorReport):
            m = {"model": r.model}
            out.append(("featurestore_monitor_status", m, _STATUS[r.status]))
            out.append(("featurestore_monitor_rows", {**m, "source": r.source}, float(r.rows)))
            out += [("featurestore_monitor_check_status", {**m, "check": c.check, "subject": c.subject,
                                                           "figure": c.figure}, _STATUS[c.status]) for c in r.checks]
            out += [("featurestore_monitor_signals", {**m, "side": side}, float(n)) for side, n in r.signals.items()]
            for f in r.features:
                for gauge, value in (("psi", f.drift.psi), ("ks", f.drift.ks), ("null_rate", f.drift.null_rate)):
                    if value is not None:
                        out.append((f"featurestore_feature_{gauge}", {**m, "feature": f.feature}, value))
            if r.prediction is not None:
                out += [(f"featurestore_prediction_{g}", m, v) for g, v in (("psi", r.prediction.psi),
                                                                           ("ks", r.prediction.ks)) if v is not None]
            for of, figures in (("live", r.live), ("backtest", r.backtest)):
                if figures is not None:
                    out += [(f"featurestore_live_{g}", {**m, "of": of}, v)
                            for g, v in (("ic", figures.ic), ("hit_rate", figures.hit_rate)) if v is not None]
        for view, rows in scorer.freshness(now=clock()).items():
            out += [("featurestore_freshness_age_seconds", {"view": view, "symbol": row["symbol"]},
                     row["age_seconds"]) for row in rows]
        for c in _reports(fs, "consistency-*.json", ConsistencyReport):
            out += [("featurestore_consistency_match_share", {"view": c.view, "feature": f.feature}, f.share)
                    for f in c.features if f.share is not None]
            out += [("featurestore_consistency_rows", {"view": c.view, "kind": kind}, float(n))
                    for kind, n in (("compared", c.compared), ("only_served", c.only_served),
                                    ("only_offline", c.only_offline))]
        return out

    return samples

"""The OpenAPI 3.1 description of the HTTP service (served at ``/openapi.json``), written by hand.

It states exactly what ``serving.http`` enforces (the batch limit, symbol lengths, no unknown body keys),
so schema-based fuzzing checks the server against its own contract.

>>> schema = openapi_schema(max_batch=256, auth=True)
>>> sorted(schema["paths"]), schema["security"]
(['/docs', '/features/{view}', '/features/{view}/{symbol}', '/health', '/metrics', '/score'], [{'bearer': []}])
>>> "/score" in openapi_schema(max_batch=256, auth=False, scoring=False)["paths"]  # serve --features-only
False
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_SYMBOL_LENGTH", "openapi_schema"]

MAX_SYMBOL_LENGTH = 100

_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_SYMBOL_LENGTH}
_VALUE = {"type": ["number", "string", "null"], "description": "a float; null when missing; \"inf\" / \"-inf\""}
_ERROR = {"type": "object", "required": ["error", "message"], "properties": {
    "error": {"type": "string", "description": "a stable code, e.g. not_found, version_skew, stale_features"},
    "message": {"type": "string"}}}
_ROW = {"type": "object", "required": ["view", "symbol", "ts", "view_version", "updated_at", "features"], "properties": {
    "view": {"type": "string"}, "symbol": {"type": "string"}, "ts": {"type": "string", "format": "date-time"},
    "view_version": {"type": "string"}, "updated_at": {"type": "string", "format": "date-time"},
    "features": {"type": "object", "additionalProperties": _VALUE}}}
_SIGNAL = {"type": "object", "required": ["ts", "symbol", "side", "score", "previous_side", "action", "quantity",
                                          "position_after", "model", "model_version", "views", "features", "missing",
                                          "thresholds", "mode", "seq", "prev", "signature"], "properties": {
    "ts": {"type": "string", "format": "date-time"}, "symbol": {"type": "string"},
    "side": {"enum": ["LONG", "SHORT", "FLAT"]}, "previous_side": {"enum": ["LONG", "SHORT", "FLAT"]},
    "score": _VALUE, "action": {"enum": ["BUY", "SELL", "HOLD"]}, "quantity": {"type": "number"},
    "position_after": {"type": "number"}, "model": {"type": "string"}, "model_version": {"type": "string"},
    "views": {"type": "object", "additionalProperties": {"type": "object", "properties": {
        "version": {"type": "string"}, "ts": {"type": "string", "format": "date-time"}}}},
    "features": {"type": "object", "additionalProperties": _VALUE},
    "missing": {"type": "array", "items": {"type": "string"}},
    "thresholds": {"type": "object", "properties": {"long_above": {"type": "number"}, "short_below": {"type": "number"}}},
    "mode": {"enum": ["live", "replay"]},
    "seq": {"type": "integer", "minimum": 1, "description": "the signal's place in the audit log (hash chain)"},
    "prev": {"type": ["string", "null"], "description": "the signature of the audit log's line before (null: first)"},
    "signature": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}}
_HEALTH = {"type": "object", "required": ["status", "model", "now", "views"], "properties": {
    "status": {"enum": ["ok", "degraded"]}, "model": {"type": ["object", "null"], "description": "null: features only"},
    "now": {"type": "string", "format": "date-time"},
    "views": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "object", "properties": {
        "symbol": {"type": "string"}, "ts": {"type": "string"}, "age_seconds": {"type": "number"},
        "max_age_seconds": {"type": "number"}, "fresh": {"type": "boolean"}, "view_version": {"type": "string"},
        "version_matches": {"type": "boolean"}}}}}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int, auth: bool) -> dict[str, Any]:
    reasons = {400: "the body is not JSON", 401: "missing or wrong bearer token",
               404: "no online row for the view and symbol", 409: "version skew, stale, future or non-finite features (see error)",
               413: "the body is larger than the limit", 415: "the body is not application/json",
               422: "the body or a parameter is not valid"}
    return {str(code): _json({"$ref": "#/components/schemas/Error"}, reasons[code])
            for code in (*codes, *((401,) if auth else ())) if code in reasons}


def openapi_schema(*, max_batch: int, auth: bool, scoring: bool = True) -> dict[str, Any]:
    """The service's OpenAPI document; ``auth`` adds the bearer scheme to every operation but the two public
    ones (this document and ``/docs``); without ``scoring`` (no model loaded) there is no ``/score``."""
    view = {"name": "view", "in": "path", "required": True, "schema": {"type": "string"}}
    features = {"tags": ["features"], "responses": {"200": _json({"$ref": "#/components/schemas/FeatureRow"},
                                                                  "the latest online row"), **_errors(404, auth=auth)}}
    schema: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "featurestore serving", "version": "1",
                 "description": "Latest feature rows and signed model signals. Signal-only: no order is sent."},
        "paths": {
            "/features/{view}/{symbol}": {"get": {
                **features, "operationId": "getFeatures", "summary": "the latest online row of a view for a symbol",
                "description": "The symbol may contain '/', sent as is (/features/research/BTC/USDT) or encoded "
                               "(BTC%2FUSDT).",
                "parameters": [view, {"name": "symbol", "in": "path", "required": True, "schema": {"type": "string"}}]}},
            "/features/{view}": {"get": {
                **features, "operationId": "getFeaturesByQuery", "summary": "the same, symbol as a query parameter",
                "parameters": [view, {"name": "symbol", "in": "query", "required": True, "schema": {"type": "string"}}],
                "responses": {**features["responses"], **_errors(422, auth=auth)}}},
            "/score": {"post": {
                "operationId": "score", "summary": "score symbols and return signed signals (appended to the audit log)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["symbols"], "additionalProperties": False, "properties": {
                        "symbols": {"type": "array", "items": _NAME, "minItems": 1, "maxItems": max_batch,
                                    "uniqueItems": True}}}}}},
                "responses": {"200": _json({"type": "object", "required": ["signals"], "properties": {
                    "signals": {"type": "array", "items": {"$ref": "#/components/schemas/Signal"}}}}, "one signal per symbol"),
                    **_errors(400, 404, 409, 413, 415, 422, auth=auth)}}},
            "/health": {"get": {"operationId": "health", "summary": "model loaded; online rows' age and version per view",
                                "responses": {"200": _json({"$ref": "#/components/schemas/Health"}, "healthy"),
                                              "503": _json({"$ref": "#/components/schemas/Health"},
                                                           "degraded: a row stale, missing or of another version"),
                                              **_errors(auth=auth)}}},
            "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics (text format 0.0.4)",
                                 "responses": {"200": {"description": "metrics", "content": {"text/plain": {
                                     "schema": {"type": "string"}}}}, **_errors(auth=auth)}}},
            "/docs": {"get": {"operationId": "docs", "summary": "this document as an HTML page (public, self-contained)",
                              "security": [], "responses": {"200": {"description": "the page", "content": {
                                  "text/html": {"schema": {"type": "string"}}}}}}},
        },
        "components": {"schemas": {"Error": _ERROR, "FeatureRow": _ROW, "Signal": _SIGNAL, "Health": _HEALTH}},
    }
    if not scoring:
        del schema["paths"]["/score"], schema["components"]["schemas"]["Signal"]
    if auth:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
    return schema

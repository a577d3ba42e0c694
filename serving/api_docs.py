"""``GET /docs``: the service's OpenAPI document rendered as one self-contained HTML page.

Rendered on the server from the same document ``/openapi.json`` serves (``serving.openapi``): every path
and method with its summary, parameters, request body and responses, then every schema, each reference a
link to it. The page loads nothing: no script, no stylesheet or font from a CDN (it works with the network
closed), and every text from the document is escaped.

>>> from serving.openapi import openapi_schema
>>> page = docs_html(openapi_schema(max_batch=256, auth=False))
>>> page.startswith("<!DOCTYPE html>"), "<script" in page, "http://" in page or "https://" in page
(True, False, False)
>>> '<code class="path">/score</code>' in page, 'href="#schema-Signal"' in page
(True, True)
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

__all__ = ["docs_html"]

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 960px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
section.op { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; margin: 1em 0; }
.method { display: inline-block; min-width: 4em; font-weight: bold; text-transform: uppercase; }
.get { color: #1a6; } .post { color: #16a; } code.path { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.4em 0; } td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 13px; }
"""


def _type(schema: dict[str, Any]) -> str:
    """A schema in a few words: a link for a reference, else its type or enum."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{escape(name)}">{escape(name)}</a>'
    if "enum" in schema:
        return " | ".join(escape(json.dumps(value)) for value in schema["enum"])
    kind = schema.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    if kind == "array" and "items" in schema:
        return f"array of {_type(schema['items'])}"
    if kind == "object" and "properties" in schema:
        return "{" + ", ".join(f"{escape(name)}: {_type(value)}" for name, value in schema["properties"].items()) + "}"
    return escape(str(kind))


def _operation(path: str, method: str, operation: dict[str, Any]) -> str:
    parts = [f'<section class="op" id="{escape(operation.get("operationId", path))}">',
             f'<span class="method {escape(method)}">{escape(method)}</span> <code class="path">{escape(path)}</code>',
             f"<p>{escape(operation.get('summary', ''))}</p>"]
    if operation.get("description"):
        parts.append(f"<p>{escape(operation['description'])}</p>")
    if operation.get("parameters"):
        rows = "".join(f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
                       f"<td>{'required' if p.get('required') else 'optional'}</td><td>{_type(p.get('schema', {}))}</td></tr>"
                       for p in operation["parameters"])
        parts.append(f"<table><tr><th>parameter</th><th>in</th><th></th><th>type</th></tr>{rows}</table>")
    body = operation.get("requestBody", {}).get("content", {})
    for media, content in body.items():
        parts.append(f"<p>request body ({escape(media)}):</p><pre>{escape(json.dumps(content['schema'], indent=1))}</pre>")
    rows = "".join(f"<tr><td>{escape(status)}</td><td>{escape(response.get('description', ''))}</td><td>"
                   + ", ".join(_type(c.get("schema", {})) for c in response.get("content", {}).values())
                   + "</td></tr>" for status, response in operation.get("responses", {}).items())
    parts.append(f"<table><tr><th>status</th><th>meaning</th><th>body</th></tr>{rows}</table></section>")
    return "\n".join(parts)


def docs_html(schema: dict[str, Any]) -> str:
    """The HTML page of an OpenAPI 3.1 document (``serving.openapi.openapi_schema``)."""
    info = schema.get("info", {})
    auth = ("<p>Every endpoint but this page and <code>/openapi.json</code> needs <code>Authorization: Bearer "
            "&lt;token&gt;</code>.</p>" if schema.get("security") else "")
    operations = [_operation(path, method, operation) for path, methods in schema.get("paths", {}).items()
                  for method, operation in methods.items()]
    schemas = [f'<h3 id="schema-{escape(name)}">{escape(name)}</h3><pre>{escape(json.dumps(body, indent=1))}</pre>'
               for name, body in schema.get("components", {}).get("schemas", {}).items()]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(info.get('title', 'API'))}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(info.get('title', 'API'))}</h1>",
        f"<p>{escape(info.get('description', ''))} OpenAPI {escape(schema.get('openapi', ''))}, version "
        f"{escape(str(info.get('version', '')))}: the machine-readable document is <code>/openapi.json</code>.</p>",
        auth, "<h2>Endpoints</h2>", *operations, "<h2>Schemas</h2>", *schemas, "</body></html>", ""])

"""The OpenAPI 3 document, generated from the registered routes, and a plain docs page.

Each route contributes its path parameters, the first line of its docstring,
the access it requires (`custody.api.auth.EndpointAccess`), its request-body
schema (`custody.api.schema.accepts`) and the known query parameters.
"""

from __future__ import annotations

import html
import re
from typing import Any

from apispec import APISpec
from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue

from custody.api.auth import HEADER_IDEMPOTENCY_KEY, HEADER_MFA, EndpointAccess
from policies.request_signing import HEADER_KEY_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP

bp = Blueprint("openapi", __name__, url_prefix="/api/v1")

API_PREFIX = "/api/v1"
_CONVERTER = re.compile(r"<(?:(?P<conv>[a-z]+):)?(?P<name>[a-z_]+)>")
_INT = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_STR = {"type": "string", "maxLength": 128}
QUERY_PARAMETERS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "ledger.list_accounts": [("owner", _STR)],
    "ledger.account_history": [
        ("cursor", _INT),
        ("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
    ],
    "access.read_security_log": [
        ("cursor", _INT),
        ("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
    ],
    "withdrawals.list_withdrawals": [
        ("state", {"enum": ["pending_approval", "delayed", "approved", "rejected", "cancelled", "blocked"]}),
        ("username", _STR),
        ("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
    ],
    "policy.list_proposals": [("state", {"enum": ["open", "applied", "superseded"]})],
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "error", "message"],
    "properties": {"code": {"type": "integer"}, "error": {"type": "string"}, "message": {"type": "string"}},
}
SIGNATURE_SCHEMES = {
    "StrongroomKey": HEADER_KEY_ID,
    "StrongroomTimestamp": HEADER_TIMESTAMP,
    "StrongroomSignature": HEADER_SIGNATURE,
}


def build_openapi(app: Flask) -> dict[str, Any]:
    """Return the OpenAPI 3 document of every ``/api/v1`` route of ``app``."""
    spec = APISpec(
        title="Strongroom API",
        version="1",
        openapi_version="3.0.3",
        info={
            "description": "Custody and exchange API. Requests are signed with HMAC-SHA256 "
            "(docs/request-signing.md); errors are {code, error, message} (docs/api.md)."
        },
    )
    for name, header in SIGNATURE_SCHEMES.items():
        spec.components.security_scheme(name, {"type": "apiKey", "in": "header", "name": header})
    spec.components.schema("Error", ERROR_SCHEMA)
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.rule.startswith(API_PREFIX):
            continue
        path, parameters = _path(rule.rule)
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(rule.endpoint, view, method, parameters)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


def _path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    parameters = []
    for match in _CONVERTER.finditer(rule):
        schema = dict(_INT) if match["conv"] == "int" else {"type": "string", "pattern": "^[^/]{1,128}$"}
        parameters.append({"name": match["name"], "in": "path", "required": True, "schema": schema})
    return _CONVERTER.sub(lambda m: "{" + m["name"] + "}", rule), parameters


def _operation(
    endpoint: str, view: Any, method: str, path_parameters: list[dict[str, Any]]
) -> dict[str, Any]:
    doc = (view.__doc__ or endpoint).strip().splitlines()
    access: EndpointAccess | None = getattr(view, "endpoint_access", None)
    parameters = list(path_parameters)
    parameters += [
        {"name": n, "in": "query", "required": False, "schema": s}
        for n, s in QUERY_PARAMETERS.get(endpoint, [])
    ]
    operation: dict[str, Any] = {
        "operationId": endpoint,
        "summary": doc[0],
        "tags": [endpoint.split(".")[0]],
        "responses": {
            "200": {
                "description": "success",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "default": {
                "description": "refusal: {code, error, message} (batch results on 207/422)",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
        },
    }
    if method == "POST":
        operation["responses"]["201"] = operation["responses"]["200"]
    if access is not None:
        operation["security"] = [{name: [] for name in SIGNATURE_SCHEMES}]
        operation["description"] = "Access: " + access.describe() + "."
        operation["x-strongroom-access"] = {
            "permissions": [p.value for p in access.permissions],
            "scope": access.scope.value,
            "mfa": access.mfa,
            "admin_only": access.admin_only,
        }
        if access.mfa:
            parameters.append(
                {
                    "name": HEADER_MFA,
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]{6}$"},
                }
            )
        if method == "POST":
            parameters.append(
                {
                    "name": HEADER_IDEMPOTENCY_KEY,
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"},
                }
            )
    schema = getattr(view, "request_schema", None)
    if schema is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    if parameters:
        operation["parameters"] = parameters
    return operation


@bp.get("/openapi.json")
def openapi_document() -> ResponseReturnValue:
    """Return this OpenAPI 3 document (public)."""
    document = current_app.extensions.get("strongroom.openapi")
    if document is None:
        document = build_openapi(current_app)
        current_app.extensions["strongroom.openapi"] = document
    return jsonify(document)


@bp.get("/docs")
def docs_page() -> ResponseReturnValue:
    """Return a plain HTML page listing every endpoint (public)."""
    document = build_openapi(current_app)
    rows = []
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op['summary'])}</td>"
                f"<td>{html.escape(op.get('description', 'public'))}</td></tr>"
            )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Strongroom API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:4px 10px;border-bottom:1px solid #ddd}"
        "</style></head><body><h1>Strongroom API v1</h1>"
        "<p>Machine-readable: <a href='/api/v1/openapi.json'>/api/v1/openapi.json</a>. Signing: "
        "docs/request-signing.md; errors, roles and the withdrawal state machine: docs/api.md.</p>"
        "<table><tr><th>method</th><th>path</th><th>summary</th><th>access</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
    return page, 200, {"Content-Type": "text/html; charset=utf-8"}

"""The OpenAPI 3 document, generated from the registered routes, and a plain docs page.

Each route contributes its path parameters, the first line of its docstring,
the access it requires (`custody.api.auth.EndpointAccess`), its request-body
and success-response schemas (`custody.api.schema`: ``@accepts``/``@answers``
on the view, or the `OPERATIONS` table by endpoint name) and the known query
parameters. Every refusal references the ``Error`` component.
"""

from __future__ import annotations

import html
import re
from typing import Any

from apispec import APISpec
from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from custody.api.auth import HEADER_IDEMPOTENCY_KEY, HEADER_MFA, EndpointAccess
from custody.api.schema import (
    COMPONENTS,
    NO_BODY,
    OPERATIONS,
    REQUEST_COMPONENTS,
    WITHDRAWAL_STATES,
    Operation,
    ref,
)
from policies.request_signing import HEADER_KEY_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP

bp = Blueprint("openapi", __name__, url_prefix="/api/v1")

API_PREFIX = "/api/v1"
_CONVERTER = re.compile(r"<(?:(?P<conv>[a-z]+)(?:\((?P<args>[^)]*)\))?:)?(?P<name>[a-z_]+)>")
_INT = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_STR = {"type": "string", "maxLength": 128}
_POSITIVE = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
_LIMIT = {"type": "integer", "minimum": 1, "maximum": 1000}
_CHAIN = {"type": "string", "enum": ["ethereum", "bitcoin"]}
QUERY_PARAMETERS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "ledger.list_accounts": [("owner", {"type": "string"})],
    "audit.list_checkpoints": [("after", _INT), ("limit", _LIMIT)],
    "audit.inclusion_proof": [("seq", _POSITIVE), ("tree_size", _POSITIVE), ("checkpoint", _POSITIVE)],
    "audit.consistency_proof": [("first", _POSITIVE), ("first_checkpoint", _POSITIVE),
                                ("second", _POSITIVE), ("second_checkpoint", _POSITIVE)],
    "audit.liability_proof": [("owner", {"type": "string"}), ("asset", {"type": "string"})],
    "audit.reserves_report_view": [("snapshot", _POSITIVE)],
    "wallets.list_wallets": [("chain", _CHAIN)],
    "wallets.list_transactions": [("chain", _CHAIN)],
    "wallets.list_refills": [("chain", _CHAIN)],
    "wallets.latest_reconciliation": [("chain", _CHAIN)],
    "wallets.run_reconciliation": [("chain", _CHAIN)],
    "ledger.account_history": [
        ("cursor", _INT),
        ("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
    ],
    "access.read_security_log": [
        ("cursor", _INT),
        ("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
    ],
    "withdrawals.list_withdrawals": [
        ("state", {"type": "string", "enum": list(WITHDRAWAL_STATES)}),
        ("username", {"type": "string"}),
        ("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
    ],
    "policy.list_proposals": [("state", {"type": "string", "enum": ["open", "applied", "superseded"]})],
}
ERROR_SCHEMA = COMPONENTS["Error"]
# Refusals every signed operation can answer with (all ``Error``); "default" covers the rest.
ERROR_STATUSES = {
    "400": "malformed request or refused value",
    "401": "missing, malformed or invalid request signature, or MFA required",
    "403": "the caller's role, scope or IP allowlist does not permit this",
    "404": "no such resource (or not the caller's)",
    "409": "conflicts with the current state",
    "413": "request body too large",
    "415": "request body is not JSON",
    "422": "well formed but refused (funds, margin, policy)",
    "429": "rate limited (see Retry-After)",
    "503": "a dependency (database, keystore, chain node) is unavailable",
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
    for name, schema in COMPONENTS.items():
        spec.components.schema(name, schema)
    for name, schema in REQUEST_COMPONENTS.items():
        spec.components.schema(name, _null_means_absent(schema))
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.rule.startswith(API_PREFIX):
            continue
        path, parameters = _path(rule.rule)
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(rule.endpoint, view, method, parameters)
    _add_shadowed(app, paths)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


def _add_shadowed(app: Flask, paths: dict[str, dict[str, Any]]) -> None:
    """Document the methods a fixed path also answers through a templated route.

    ``GET /ledger/transfers/batch`` is ``GET /ledger/transfers/{transfer_id}`` with the id
    ``batch`` (the server routes it there and lists GET in ``Allow``), so the document says so.
    """
    adapter = app.url_map.bind("localhost")
    for path, operations in paths.items():
        if "{" in path:
            continue
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            if method.lower() in operations:
                continue
            try:
                rule, args = adapter.match(path, method=method, return_rule=True)
            except HTTPException:
                continue
            operation = _operation(rule.endpoint, app.view_functions[rule.endpoint], method, [])
            fixed = ", ".join(f"{name}={value}" for name, value in sorted(args.items()))
            operation["operationId"] = f"{rule.endpoint}@{path}"
            access = operation.get("description", "")
            operation["description"] = f"{rule.rule} with {fixed}. {access}".strip()
            operations[method.lower()] = operation


def _path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    parameters = []
    for match in _CONVERTER.finditer(rule):
        if match["conv"] == "int":
            schema: dict[str, Any] = dict(_INT)
        elif match["conv"] == "any":
            schema = {"type": "string", "enum": [a.strip() for a in match["args"].split(",")]}
        else:
            schema = {"type": "string", "pattern": "^[^/]{1,128}$"}
        parameters.append({"name": match["name"], "in": "path", "required": True, "schema": schema})
    return _CONVERTER.sub(lambda m: "{" + m["name"] + "}", rule), parameters


def _operation(
    endpoint: str, view: Any, method: str, path_parameters: list[dict[str, Any]]
) -> dict[str, Any]:
    doc = (view.__doc__ or endpoint).strip().splitlines()
    access: EndpointAccess | None = getattr(view, "endpoint_access", None)
    documented = _documented(endpoint, view)
    table = OPERATIONS.get(endpoint)
    narrower: dict[str, Any] = {**((table.path or {}) if table is not None else {}),
                                **getattr(view, "path_schemas", {})}
    parameters = [dict(p, schema=narrower[p["name"]]) if p["name"] in narrower else p
                  for p in path_parameters]
    parameters += [
        {"name": n, "in": "query", "required": False, "schema": s}
        for n, s in QUERY_PARAMETERS.get(endpoint, [])
    ]
    parameters += getattr(view, "query_schemas", [])  # a view's own (exchange/api/marketdata.py)
    operation: dict[str, Any] = {
        "operationId": endpoint,
        "summary": doc[0],
        "tags": [endpoint.split(".")[0]],
        "responses": _responses(documented, public=access is None),
    }
    if documented.undocumented:
        operation["x-strongroom-undocumented"] = True
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
    schema = getattr(view, "request_schema", None) or documented.request
    if schema is not None and method not in NO_BODY:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _null_means_absent(schema)}}}
    if parameters:
        operation["parameters"] = parameters
    return operation


def _null_means_absent(schema: dict[str, Any]) -> dict[str, Any]:
    """Return a body schema whose optional fields also admit null.

    The views read bodies with `custody.api.request`, where a null optional field
    means the field is absent (booleans excepted: they must be true or false); the
    document says so rather than promise a refusal.
    """
    properties = schema.get("properties")
    if schema.get("type") != "object" or not properties:
        return schema
    required = set(schema.get("required", ()))
    return {**schema, "properties": {
        name: prop if name in required or "$ref" in prop or prop.get("type") == "boolean"
        else {**prop, "nullable": True}
        for name, prop in properties.items()}}


def _documented(endpoint: str, view: Any) -> Operation:
    """Return what is documented about ``endpoint``: the view's own schemas, else `OPERATIONS`."""
    table = OPERATIONS.get(endpoint)
    responses = getattr(view, "response_schemas", None)
    if responses is not None:
        return Operation(responses, table.request if table is not None else None)
    if table is None:
        # An undocumented operation still gets a valid document; the completeness test fails.
        return Operation({"200": {"type": "object"}}, undocumented=True)
    return table


def _responses(documented: Operation, *, public: bool) -> dict[str, Any]:
    error = {"application/json": {"schema": ref("Error")}}
    responses: dict[str, Any] = {}
    if not public:
        responses.update({status: {"description": text, "content": error}
                          for status, text in ERROR_STATUSES.items()})
    for status, schema in documented.responses.items():
        responses[status] = {"description": "success" if status < "300" else "batch results",
                             "content": {documented.media_type: {"schema": schema}}}
    responses["default"] = {"description": "refusal: {code, error, message} (docs/api.md)",
                            "content": error}
    return responses


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

"""An in-process stand-in for Bitcoin Core's JSON-RPC, backed by the embedded regtest chain.

It follows Core's documented shapes: JSON-RPC 1.0 requests, ``{"result", "error", "id"}``
responses, HTTP 401 with an empty body for bad credentials, HTTP 500 carrying the error
object for RPC errors and 404 for an unknown method (code -32601).
"""

from __future__ import annotations

import base64
import json
import threading
from decimal import Decimal
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from custody.chains.bitcoin.backend import RPC_METHOD_NOT_FOUND, RpcError
from custody.chains.bitcoin.regtest import RegtestChain

METHODS = (
    "getblockchaininfo",
    "getblockhash",
    "getblock",
    "getblockheader",
    "getrawtransaction",
    "testmempoolaccept",
    "sendrawtransaction",
    "estimatesmartfee",
    "scantxoutset",
)


class _Encoder(json.JSONEncoder):
    def default(self, o: object) -> Any:
        if isinstance(o, Decimal):
            return _Raw(str(o))
        return super().default(o)


class _Raw(float):
    """Print a Decimal exactly as Core does (a JSON number with 8 decimals)."""

    def __new__(cls, text: str) -> _Raw:
        value = super().__new__(cls, text)
        value.text = text  # type: ignore[attr-defined]
        return value

    def __repr__(self) -> str:
        return self.text  # type: ignore[attr-defined, no-any-return]


class RpcStandin:
    """Serve ``chain`` on 127.0.0.1 with basic auth ``user:password``."""

    def __init__(self, chain: RegtestChain, user: str = "rpcuser", password: str = "rpcpass") -> None:
        self.chain = chain
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.headers.get("Authorization") != self._auth:
            return Response(b"", status=401)(environ, start_response)
        body = json.loads(request.get_data())
        method, params = body.get("method"), body.get("params", [])
        if method not in METHODS:
            payload = {
                "result": None,
                "id": body.get("id"),
                "error": {"code": RPC_METHOD_NOT_FOUND, "message": "Method not found"},
            }
            return self._json(payload, 404)(environ, start_response)
        try:
            result = getattr(self.chain, method)(*params)
        except RpcError as exc:
            payload = {
                "result": None,
                "id": body.get("id"),
                "error": {"code": exc.rpc_code, "message": exc.rpc_message},
            }
            return self._json(payload, 500)(environ, start_response)
        return self._json({"result": result, "error": None, "id": body.get("id")}, 200)(
            environ, start_response
        )

    @staticmethod
    def _json(payload: dict[str, Any], status: int) -> Response:
        text = json.dumps(_exact(payload))
        return Response(text, status=status, content_type="application/json")


def _exact(value: Any) -> Any:
    """Replace Decimals by floats whose repr is the exact decimal text (json uses float.__repr__)."""
    if isinstance(value, Decimal):
        return _Raw(str(value))
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exact(v) for v in value]
    return value

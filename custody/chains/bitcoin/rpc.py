"""A Bitcoin Core JSON-RPC client (the production backend), on the standard library only.

Requests are JSON-RPC 1.0 (``{"jsonrpc": "1.0", "id", "method", "params"}``)
with HTTP basic auth from ``user:password`` or Core's ``.cookie`` file
(``__cookie__:<hex>``, re-read on every 401 because bitcoind rewrites it on
restart). Core answers errors as ``{"result": null, "error": {"code", "message"}}``
with HTTP 500 (404 for an unknown method); those become :class:`RpcError`.
A refused connection, a timeout or a non-JSON body is ``NODE_UNAVAILABLE``.
Numbers are parsed as ``Decimal`` so BTC amounts are exact.

``getrawtransaction`` of mined transactions needs ``txindex=1`` on the node.
"""

from __future__ import annotations

import base64
import itertools
import json
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from custody.chains.adapter import ChainCode, ChainError
from custody.chains.bitcoin.backend import RPC_METHOD_NOT_FOUND, RpcError

DEFAULT_TIMEOUT_S = 30.0
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class BitcoinRpc:
    """Call Bitcoin Core's RPC over HTTP; implements :class:`BitcoinBackend`."""

    def __init__(
        self,
        url: str,
        cookie_file: Path | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"bitcoind RPC URL scheme was {parts.scheme!r}, must be http or https")
        self._credentials: str | None = None
        if parts.username is not None:
            self._credentials = f"{parts.username}:{parts.password or ''}"
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
        self._url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        self._cookie_file = cookie_file
        self._timeout_s = timeout_s
        self._ids = itertools.count(1)

    # -- the documented methods ------------------------------------------------------------------

    def getblockchaininfo(self) -> dict[str, Any]:
        return dict(self.call("getblockchaininfo"))

    def getblockhash(self, height: int) -> str:
        return str(self.call("getblockhash", height))

    def getblock(self, blockhash: str, verbosity: int = 1) -> dict[str, Any]:
        return dict(self.call("getblock", blockhash, verbosity))

    def getblockheader(self, blockhash: str, verbose: bool = True) -> dict[str, Any]:
        return dict(self.call("getblockheader", blockhash, verbose))

    def getrawtransaction(self, txid: str, verbose: bool = False) -> Any:
        return self.call("getrawtransaction", txid, verbose)

    def testmempoolaccept(self, rawtxs: list[str]) -> list[dict[str, Any]]:
        return list(self.call("testmempoolaccept", rawtxs))

    def sendrawtransaction(self, hexstring: str) -> str:
        return str(self.call("sendrawtransaction", hexstring))

    def estimatesmartfee(self, conf_target: int) -> dict[str, Any]:
        return dict(self.call("estimatesmartfee", conf_target))

    def scantxoutset(self, action: str, scanobjects: list[Any]) -> dict[str, Any]:
        return dict(self.call("scantxoutset", action, scanobjects))

    # -- transport -------------------------------------------------------------------------------

    def call(self, method: str, *params: Any) -> Any:
        """Call ``method``; return its result or raise RpcError / ChainError(NODE_UNAVAILABLE)."""
        body = json.dumps(
            {"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)}
        ).encode()
        status, payload = self._post(body)
        if status == 401:
            status, payload = self._post(body)  # the cookie may have been rewritten by a restart
        if status == 401:
            raise ChainError(ChainCode.NODE_UNAVAILABLE, f"bitcoind refused the credentials for {method}")
        try:
            document = json.loads(payload, parse_float=Decimal)
        except ValueError:
            raise ChainError(
                ChainCode.NODE_UNAVAILABLE, f"bitcoind answered {method} with HTTP {status} and no JSON"
            ) from None
        if not isinstance(document, dict) or "error" not in document or "result" not in document:
            raise ChainError(ChainCode.NODE_UNAVAILABLE, f"bitcoind answered {method} with a non-RPC body")
        error = document["error"]
        if error is not None:
            code = error.get("code", RPC_METHOD_NOT_FOUND) if isinstance(error, dict) else -1
            message = error.get("message", "") if isinstance(error, dict) else str(error)
            raise RpcError(int(code), str(message))
        return document["result"]

    def _post(self, body: bytes) -> tuple[int, bytes]:
        # The scheme is checked to be http(s) in __init__.
        request = urllib.request.Request(self._url, data=body, method="POST")  # noqa: S310
        request.add_header("Content-Type", "application/json")
        credentials = self._auth()
        if credentials is not None:
            request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
                return int(response.status), response.read(MAX_RESPONSE_BYTES)
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read(MAX_RESPONSE_BYTES)
        except (urllib.error.URLError, OSError) as exc:
            raise ChainError(
                ChainCode.NODE_UNAVAILABLE, f"bitcoind at {self._url} unreachable: {exc}"
            ) from None

    def _auth(self) -> str | None:
        if self._cookie_file is not None:
            try:
                return self._cookie_file.read_text().strip()
            except OSError as exc:
                raise ChainError(ChainCode.NODE_UNAVAILABLE, f"cannot read the RPC cookie: {exc}") from None
        return self._credentials

"""The regtest chain as a Bitcoin Core RPC server whose state survives restarts.

State is a journal (``bitcoin.jsonl``): one JSON line per change that was
accepted (a block mined, a transaction accepted, a faucet payment, a reorg).
The regtest chain is deterministic, so replaying the journal on start gives
the same blocks, hashes and mempool. Every line is flushed and fsynced before
the RPC answers, so a killed devnet loses nothing it acknowledged.

RPC: the platform's subset (``custody.chains.bitcoin.rpc``) plus the
operator's: ``getblockcount``, ``generatetoaddress`` (as Core),
``sendtoaddress`` (the faucet pays; as Core's wallet, amounts in BTC) and
``devnet_reorg [depth, drop]`` (devnet only: replace the top ``depth``
blocks by ``depth + 1`` new ones; ``drop`` discards their transactions as a
double-spending branch would, otherwise they return to the mempool and are
mined again).
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import threading
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from custody.chains.bitcoin.backend import (
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_METHOD_NOT_FOUND,
    RpcError,
    btc_to_sat,
)
from custody.chains.bitcoin.network import script_of
from custody.chains.bitcoin.regtest import RegtestChain

JOURNAL_NAME = "bitcoin.jsonl"
# Faucet coins mature after 100 blocks: the first start mines this many.
INITIAL_BLOCKS = 101
MAX_MINE_PER_CALL = 1_000
MAX_REORG_DEPTH = 100
MAX_REQUEST_BYTES = 4 * 1024 * 1024
READ_METHODS = (
    "getblockchaininfo", "getblockhash", "getblock", "getblockheader", "getrawtransaction",
    "testmempoolaccept", "estimatesmartfee", "scantxoutset",
)


class JournaledRegtest:
    """A :class:`RegtestChain` whose changes are appended to a journal and replayed on open."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / JOURNAL_NAME
        self.chain = RegtestChain()
        self._lock = threading.Lock()
        if self.path.exists():
            self._replay()
        self._journal = self.path.open("a", encoding="utf-8")
        if self.chain.height == 0:
            self.mine(INITIAL_BLOCKS)

    def close(self) -> None:
        self._journal.close()

    # -- changes (journaled) ---------------------------------------------------------------------

    def mine(self, count: int, address: str | None = None) -> list[str]:
        """Mine ``count`` blocks with the mempool; coinbase to ``address`` (or the faucet)."""
        if not isinstance(count, int) or not 1 <= count <= MAX_MINE_PER_CALL:
            raise RpcError(RPC_INVALID_PARAMETER, f"nblocks was {count!r}, must be 1..{MAX_MINE_PER_CALL}")
        if address is not None and script_of(address) is None:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address")
        with self._lock:
            hashes = self.chain.mine(count, address)
            self._append({"op": "mine", "count": count, "address": address})
        return hashes

    def send_raw(self, hexstring: str) -> str:
        """Accept a transaction into the mempool (Core's ``sendrawtransaction``)."""
        with self._lock:
            before = set(self.chain.mempool_txids())
            txid = self.chain.sendrawtransaction(hexstring)
            if txid not in before:
                self._append({"op": "send", "hex": hexstring})
        return txid

    def faucet(self, address: str, amount_sat: int) -> str:
        """Pay ``amount_sat`` to ``address`` from the faucet (into the mempool); return the txid."""
        if script_of(address) is None:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Invalid address")
        if not 546 <= amount_sat <= 49 * 100_000_000:
            raise RpcError(RPC_INVALID_PARAMETER, f"amount was {amount_sat} sat, must be 546..4900000000")
        with self._lock:
            try:
                txid = self.chain.faucet_send(address, amount_sat)
            except AssertionError as exc:
                raise RpcError(RPC_INVALID_PARAMETER, f"the faucet cannot pay: {exc}") from None
            self._append({"op": "faucet", "address": address, "amount_sat": amount_sat})
        return txid

    def reorg(self, depth: int, drop: bool = True) -> list[str]:
        """Replace the top ``depth`` blocks by ``depth + 1`` new ones; return the txids they held."""
        if not isinstance(depth, int) or not 1 <= depth <= min(MAX_REORG_DEPTH, self.chain.height - 1):
            raise RpcError(RPC_INVALID_PARAMETER,
                           f"depth was {depth!r}, must be 1..{min(MAX_REORG_DEPTH, self.chain.height - 1)}")
        with self._lock:
            txids = self._reorg(depth, drop)
            self._append({"op": "reorg", "depth": depth, "drop": drop})
        return txids

    # -- journal ---------------------------------------------------------------------------------

    def _reorg(self, depth: int, drop: bool) -> list[str]:
        txids = self.chain.invalidate(self.chain.height - depth + 1, drop_transactions=drop)
        self.chain.mine(depth + 1)
        return txids

    def _append(self, record: dict[str, Any]) -> None:
        self._journal.write(json.dumps(record, sort_keys=True) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def _replay(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                if number == len(lines):
                    break  # a torn last line: the change was never acknowledged
                raise RuntimeError(f"{self.path}:{number} is not JSON: the journal is damaged") from None
            op = record.get("op")
            if op == "mine":
                self.chain.mine(record["count"], record["address"])
            elif op == "send":
                self.chain.sendrawtransaction(record["hex"])
            elif op == "faucet":
                self.chain.faucet_send(record["address"], record["amount_sat"])
            elif op == "reorg":
                self._reorg(record["depth"], record["drop"])
            else:
                raise RuntimeError(f"{self.path}:{number} has unknown op {op!r}")


class QuietHandler(WSGIRequestHandler):
    """Do not log every RPC call (the platform polls several times a second)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return


class BitcoinDevnetServer:
    """Serve a :class:`JournaledRegtest` as Bitcoin Core JSON-RPC on ``host:port`` with basic auth."""

    def __init__(self, node: JournaledRegtest, user: str, password: str,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.node = node
        self._auth = ("Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()).encode()
        self._server: BaseWSGIServer = make_server(host, port, self._app, threaded=True,
                                                   request_handler=QuietHandler)
        self.port = self._server.server_port
        self.url = f"http://{host}:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self.node.close()

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        given = (request.headers.get("Authorization") or "").encode()
        if not hmac.compare_digest(given, self._auth):
            return Response(b"", status=401)(environ, start_response)
        if (request.content_length or 0) > MAX_REQUEST_BYTES:
            return Response(b"", status=413)(environ, start_response)
        try:
            body = json.loads(request.get_data(), parse_float=Decimal)
            method, params, request_id = body["method"], list(body.get("params") or []), body.get("id")
        except (ValueError, KeyError, TypeError):
            return _json({"result": None, "id": None,
                          "error": {"code": -32700, "message": "Parse error"}}, 500)(environ, start_response)
        try:
            result = self._dispatch(str(method), params)
        except RpcError as exc:
            status = 404 if exc.rpc_code == RPC_METHOD_NOT_FOUND else 500
            payload = {"result": None, "id": request_id,
                       "error": {"code": exc.rpc_code, "message": exc.rpc_message}}
            return _json(payload, status)(environ, start_response)
        except (TypeError, ValueError, AssertionError) as exc:
            payload = {"result": None, "id": request_id,
                       "error": {"code": RPC_INVALID_PARAMETER, "message": f"invalid parameters: {exc}"}}
            return _json(payload, 500)(environ, start_response)
        return _json({"result": result, "error": None, "id": request_id}, 200)(environ, start_response)

    def _dispatch(self, method: str, params: list[Any]) -> Any:
        node = self.node
        if method in READ_METHODS:
            return getattr(node.chain, method)(*params)
        if method == "sendrawtransaction":
            return node.send_raw(str(params[0]))
        if method == "getblockcount":
            return node.chain.height
        if method == "generatetoaddress":
            return node.mine(int(params[0]), str(params[1]))
        if method == "sendtoaddress":
            return node.faucet(str(params[0]), _sat(params[1]))
        if method == "devnet_reorg":
            return node.reorg(int(params[0]), bool(params[1]) if len(params) > 1 else True)
        raise RpcError(RPC_METHOD_NOT_FOUND, "Method not found")


def _sat(amount: Any) -> int:
    try:
        return btc_to_sat(Decimal(str(amount)))
    except (InvalidOperation, ValueError) as exc:
        raise RpcError(RPC_INVALID_PARAMETER, f"Invalid amount: {exc}") from None


def _json(payload: dict[str, Any], status: int) -> Response:
    return Response(json.dumps(_exact(payload)), status=status, content_type="application/json")


class _Number(float):
    """A float whose JSON text is an exact decimal (json.dumps uses float.__repr__)."""

    text: str

    def __new__(cls, text: str) -> _Number:
        value = super().__new__(cls, text)
        value.text = text
        return value

    def __repr__(self) -> str:
        return self.text


def _exact(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _Number(str(value))
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exact(v) for v in value]
    return value

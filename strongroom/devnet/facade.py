"""The in-process Ethereum chain (py-evm via eth-tester) behind a JSON-RPC facade.

The fallback when anvil cannot be installed: other processes reach the
embedded chain over HTTP like any node. It speaks the methods the platform
and the devnet controls use (``eth_*`` reads, raw and unlocked sends,
receipts, logs) and anvil's dev methods (``anvil_mine``, ``evm_snapshot``,
``evm_revert``, ``evm_setAutomine``, ``anvil_reorg``), converting eth-tester's
Python values (snake_case keys, integers) to the wire format (camelCase
keys, hex quantities). Its state lives in memory only: a restart begins a
new chain (docs/devnet.md).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from custody.chains.ethereum.devchain import AnvilChain
from strongroom.devnet.bitcoin import QuietHandler

PRIORITY_FEE_WEI = 10**9
MAX_REQUEST_BYTES = 4 * 1024 * 1024
QUANTITY_KEYS = frozenset({"value", "gas", "gas_price", "max_fee_per_gas", "max_priority_fee_per_gas",
                           "nonce", "chain_id", "from_block", "to_block"})
TAGS = ("latest", "earliest", "pending", "safe", "finalized")


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _block_id(tag: Any) -> Any:
    if isinstance(tag, str) and tag.startswith("0x") and len(tag) < 66:
        return int(tag, 16)
    return "latest" if tag in ("safe", "finalized") else tag


def _inbound(value: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, item in value.items():
        name = _snake(key)
        if name in QUANTITY_KEYS and isinstance(item, str) and item.startswith("0x") and name not in (
                "from_block", "to_block"):
            item = int(item, 16)
        elif name in ("from_block", "to_block"):
            item = _block_id(item)
        if name == "input":
            name = "data"
        out[name] = item
    return out


def _wire(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, dict):
        return {_camel(k): _wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_wire(v) for v in value]
    return value


class EthereumFacade:
    """Serve an eth-tester chain as JSON-RPC on ``host:port``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        from eth_tester import EthereumTester, PyEVMBackend

        self.tester = EthereumTester(PyEVMBackend())
        self._lock = threading.RLock()
        self._server: BaseWSGIServer = make_server(host, port, self._app, threaded=True,
                                                   request_handler=QuietHandler)
        self.url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()

    def control(self) -> AnvilChain:
        return AnvilChain(self.url)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if (request.content_length or 0) > MAX_REQUEST_BYTES:
            return Response(b"", status=413)(environ, start_response)
        try:
            body = json.loads(request.get_data())
        except ValueError:
            body = None
        if isinstance(body, list):
            answer: Any = [self._answer(item) for item in body]
        else:
            answer = self._answer(body)
        return Response(json.dumps(answer), content_type="application/json")(environ, start_response)

    def _answer(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid request"}}
        request_id, method = body.get("id"), body["method"]
        try:
            with self._lock:
                result = self._call(method, list(body.get("params") or []))
        except KeyError:
            return {"jsonrpc": "2.0", "id": request_id,
                    "error": {"code": -32601, "message": f"the method {method[:60]} does not exist"}}
        except Exception as exc:
            return {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32000, "message": str(exc)[:500]}}
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    def _call(self, method: str, params: list[Any]) -> Any:
        from eth_tester.exceptions import BlockNotFound, TransactionNotFound

        t = self.tester
        if method in ("eth_getBlockByNumber", "eth_getBlockByHash"):
            try:
                if method == "eth_getBlockByNumber":
                    block = t.get_block_by_number(_block_id(params[0]), bool(params[1]))
                else:
                    block = t.get_block_by_hash(params[0], bool(params[1]))
            except BlockNotFound:
                return None
            return _wire(block)
        if method in ("eth_getTransactionReceipt", "eth_getTransactionByHash"):
            try:
                found = (t.get_transaction_receipt(params[0]) if method == "eth_getTransactionReceipt"
                         else t.get_transaction_by_hash(params[0]))
            except TransactionNotFound:
                return None
            if found.get("block_number") is None and method == "eth_getTransactionReceipt":
                return None
            return _wire(found)
        return self._simple(method, params)

    def _simple(self, method: str, params: list[Any]) -> Any:
        t = self.tester
        handlers: dict[str, Any] = {
            "eth_chainId": lambda: hex(t.backend.chain.chain_id),
            "net_version": lambda: str(t.backend.chain.chain_id),
            "web3_clientVersion": lambda: "strongroom-devnet-facade/1",
            "eth_blockNumber": lambda: hex(t.get_block_by_number("latest")["number"]),
            "eth_accounts": lambda: list(t.get_accounts()),
            "eth_getBalance": lambda: hex(t.get_balance(params[0], _block_id(params[1]))),
            "eth_getCode": lambda: t.get_code(params[0], _block_id(params[1] if params[1:] else "latest")),
            "eth_getTransactionCount": lambda: hex(t.get_nonce(params[0], _block_id(params[1]))),
            "eth_call": lambda: t.call(self._with_sender(params[0]),
                                       _block_id(params[1] if len(params) > 1 else "latest")),
            "eth_estimateGas": lambda: hex(t.estimate_gas(_inbound(params[0]))),
            "eth_maxPriorityFeePerGas": lambda: hex(PRIORITY_FEE_WEI),
            "eth_gasPrice": lambda: hex(t.get_block_by_number("latest")["base_fee_per_gas"]
                                        + PRIORITY_FEE_WEI),
            "eth_sendRawTransaction": lambda: t.send_raw_transaction(params[0]),
            "eth_sendTransaction": lambda: t.send_transaction(_inbound(params[0])),
            "eth_getLogs": lambda: self._logs(_inbound(params[0])),
            "anvil_mine": lambda: self._mine(int(params[0], 16) if params else 1),
            "evm_mine": lambda: self._mine(1),
            "evm_snapshot": lambda: hex(t.take_snapshot()),
            "evm_revert": lambda: self._revert(params[0]),
            "evm_setAutomine": lambda: self._automine(bool(params[0])),
            "anvil_reorg": lambda: self._reorg(int(params[0])),
        }
        return handlers[method]()

    def _with_sender(self, tx: dict[str, Any]) -> dict[str, Any]:
        call = _inbound(tx)
        call.setdefault("from", self.tester.get_accounts()[0])  # eth-tester requires a sender
        return call

    def _mine(self, count: int) -> None:
        self.tester.mine_blocks(count)

    def _revert(self, snapshot: Any) -> bool:
        self.tester.revert_to_snapshot(int(snapshot, 16) if isinstance(snapshot, str) else int(snapshot))
        return True

    def _automine(self, enabled: bool) -> None:
        if enabled:
            self.tester.enable_auto_mine_transactions()
        else:
            self.tester.disable_auto_mine_transactions()

    def _reorg(self, depth: int) -> None:
        tip = self.tester.get_block_by_number("latest")["number"]
        if not 1 <= depth <= tip:
            raise ValueError(f"depth was {depth}, must be 1..{tip}")
        fork = self.tester.get_block_by_number(tip - depth)["hash"]
        self.tester.backend.revert_to_snapshot(bytes.fromhex(fork[2:]))
        self.tester.mine_blocks(depth)

    def _logs(self, query: dict[str, Any]) -> list[Any]:
        filter_id = self.tester.create_log_filter(
            from_block=query.get("from_block"), to_block=query.get("to_block"),
            address=query.get("address"), topics=query.get("topics"))
        try:
            return list(_wire(list(self.tester.get_all_filter_logs(filter_id))))
        finally:
            self.tester.delete_filter(filter_id)

"""Development chains: the in-process py-evm chain (embedded default) and a local anvil node.

Both expose the same small control surface the demo and tests need: mine
blocks, take and revert snapshots (which is how a reorganisation is made on
purpose), switch automining, fund addresses and deploy/mint the dev token from
a pre-funded, node-unlocked account. Production code never uses this module.
"""

from __future__ import annotations

from typing import Any, cast

from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.providers.eth_tester import EthereumTesterProvider

from custody.chains.ethereum.adapter import EthereumAdapter
from custody.chains.ethereum.token import DEPLOY_GAS, TOKEN_TRANSFER_GAS, artifact, transfer_calldata

TOKEN_ASSET = "USDC"  # noqa: S105 (an asset code, not a secret)
RECEIPT_TIMEOUT_S = 30


class DevChain:
    """A dev node with unlocked, pre-funded accounts; subclasses say how to mine and snapshot."""

    def __init__(self, web3: Web3) -> None:
        self.web3 = web3
        self.funder = to_checksum_address(web3.eth.accounts[0])
        self.token_address: str | None = None

    # -- control surface ---------------------------------------------------------------------

    def mine(self, blocks: int = 1) -> None:
        """Mine ``blocks`` blocks."""
        raise NotImplementedError

    def snapshot(self) -> Any:
        """Take a snapshot of the chain state; return its id."""
        raise NotImplementedError

    def revert(self, snapshot_id: Any) -> None:
        """Return the chain to ``snapshot_id``: every later block is dropped (a reorg)."""
        raise NotImplementedError

    def set_automine(self, enabled: bool) -> None:
        """Mine each transaction as it arrives (True) or only on :meth:`mine` (False)."""
        raise NotImplementedError

    # -- helpers built on web3 ---------------------------------------------------------------

    def adapter(self) -> EthereumAdapter:
        """Return an adapter that knows the dev token (deploying it on first use)."""
        return EthereumAdapter(self.web3, {TOKEN_ASSET: self.ensure_token()})

    def ensure_token(self) -> str:
        """Deploy the dev token once and return its address."""
        if self.token_address is None:
            tx = self.web3.eth.send_transaction({
                "from": self.funder, "data": artifact()["bytecode"], "gas": DEPLOY_GAS})
            receipt = self._wait(tx)
            self.token_address = to_checksum_address(receipt["contractAddress"])
        return self.token_address

    def send_eth(self, to: str, amount_wei: int, sender: str | None = None) -> str:
        """Send ETH from an unlocked account (the funder by default); return the tx hash."""
        tx = self.web3.eth.send_transaction(cast(Any, {
            "from": sender or self.funder, "to": to_checksum_address(to), "value": amount_wei,
            "gas": 21_000}))
        return Web3.to_hex(tx)

    def mint(self, to: str, amount_minor: int) -> str:
        """Mint dev tokens to ``to``; return the tx hash."""
        data = bytes.fromhex("40c10f19") + bytes.fromhex(to[2:]).rjust(32, b"\0") + amount_minor.to_bytes(
            32, "big")
        tx = self.web3.eth.send_transaction({
            "from": self.funder, "to": self.ensure_token(), "data": Web3.to_hex(data),
            "gas": TOKEN_TRANSFER_GAS})
        return Web3.to_hex(tx)

    def send_token(self, to: str, amount_minor: int, sender: str | None = None) -> str:
        """Transfer dev tokens from an unlocked account; return the tx hash."""
        tx = self.web3.eth.send_transaction({
            "from": sender or self.funder, "to": self.ensure_token(),
            "data": Web3.to_hex(transfer_calldata(to_checksum_address(to), amount_minor)),
            "gas": TOKEN_TRANSFER_GAS})
        return Web3.to_hex(tx)

    def _wait(self, tx: Any) -> Any:
        # Anvil's automine seals the block asynchronously, so an immediate receipt lookup can
        # miss it (web3 then raises TransactionNotFound): poll instead of asking once.
        if not self._automine_assumed():
            self.mine(1)
        return self.web3.eth.wait_for_transaction_receipt(tx, timeout=RECEIPT_TIMEOUT_S)

    def _automine_assumed(self) -> bool:
        return True


class EmbeddedChain(DevChain):
    """The in-process chain: web3's EthereumTesterProvider on py-evm."""

    def __init__(self) -> None:
        from eth_tester import EthereumTester, PyEVMBackend

        self.tester = EthereumTester(PyEVMBackend())
        super().__init__(Web3(EthereumTesterProvider(self.tester)))
        self._automine = True

    def mine(self, blocks: int = 1) -> None:
        self.tester.mine_blocks(blocks)

    def snapshot(self) -> Any:
        return self.tester.take_snapshot()

    def revert(self, snapshot_id: Any) -> None:
        self.tester.revert_to_snapshot(snapshot_id)

    def set_automine(self, enabled: bool) -> None:
        if enabled:
            self.tester.enable_auto_mine_transactions()
        else:
            self.tester.disable_auto_mine_transactions()
        self._automine = enabled

    def _automine_assumed(self) -> bool:
        return self._automine


class AnvilChain(DevChain):
    """A running anvil node reached over HTTP JSON-RPC."""

    def __init__(self, url: str) -> None:
        super().__init__(Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": RECEIPT_TIMEOUT_S})))
        self._automine = True

    def _rpc(self, method: str, params: list[Any]) -> Any:
        response = self.web3.provider.make_request(method, params)  # type: ignore[arg-type]
        if "error" in response:
            raise RuntimeError(f"{method} failed: {response['error']}")
        return response.get("result")

    def mine(self, blocks: int = 1) -> None:
        self._rpc("anvil_mine", [hex(blocks)])

    def snapshot(self) -> Any:
        return self._rpc("evm_snapshot", [])

    def revert(self, snapshot_id: Any) -> None:
        if self._rpc("evm_revert", [snapshot_id]) is not True:
            raise RuntimeError(f"evm_revert({snapshot_id}) refused")

    def set_automine(self, enabled: bool) -> None:
        self._rpc("evm_setAutomine", [enabled])
        self._automine = enabled

    def _automine_assumed(self) -> bool:
        return self._automine

"""Ethereum cold transfers: EIP-1559 transactions from the watch-only cold address.

The platform fills in what only the online side knows (the nonce, current
fees, the token contract) and the offline signer checks the rest against its
own anchors. A signed cold transaction cannot be re-priced without another
trip to the signer, so it gets headroom: max fee per gas is twice the
current quote (itself 2 x base fee + tip), capped by ``fee_cap_wei``; EIP-1559
charges only the base fee plus the tip, so the headroom costs nothing unless
it is needed. The fee cap in the intent is exactly gas limit x max fee.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eth_utils.address import to_checksum_address
from web3 import Web3

from custody.bundles.chains import ColdRequest, Finished, Unsigned
from custody.bundles.codes import BundleCode, BundleError
from custody.bundles.signed import check_signed
from custody.chains.ethereum.adapter import EthereumAdapter
from custody.chains.ethereum.token import NATIVE_TRANSFER_GAS, TOKEN_TRANSFER_GAS, transfer_calldata
from signer.bundle import Bundle, Chain, EthereumTransaction
from signer.results import SignerCode, SignerError
from signer.signed import SignedBundle

NETWORK_NAMES = {1: "mainnet", 11155111: "sepolia", 17000: "holesky", 31337: "anvil"}
DEFAULT_CONFIRMATIONS = 12
DEFAULT_FEE_CAP_WEI = 500 * 10**9
FEE_HEADROOM = 2
# The path `strongroom-signer keys` shows the Ethereum address for (edit if the cold key uses another).
DEFAULT_COLD_PATH = "m/44'/60'/0'/0/0"
DEFAULT_MIN_APPROVALS = 2


def network_name(chain_id: int) -> str:
    """Return the usual network name of ``chain_id`` (``chain-<id>`` for unknown ones)."""
    return NETWORK_NAMES.get(chain_id, f"chain-{chain_id}")


class EthereumBundles:
    """The Ethereum part of cold transfers (a :class:`custody.bundles.chains.BundleChain`)."""

    chain = Chain.ETHEREUM

    def __init__(
        self,
        adapter: EthereumAdapter,
        confirmations: Mapping[str, int],
        network: str | None = None,
        fee_cap_wei: int = DEFAULT_FEE_CAP_WEI,
    ) -> None:
        assert fee_cap_wei > 0, f"fee_cap_wei was {fee_cap_wei}"
        self.adapter = adapter
        self._named_network = network
        self._known_chain_id: int | None = None  # Asked of the node on first use, not at start-up.
        self._confirmations = dict(confirmations)
        self._fee_cap_wei = fee_cap_wei

    @property
    def _chain_id(self) -> int:
        if self._known_chain_id is None:
            self._known_chain_id = self.adapter.chain_id()
        return self._known_chain_id

    @property
    def network(self) -> str:
        """Return the network name the signer's anchors use (default from the node's chain id)."""
        return self._named_network or network_name(self._chain_id)

    def confirmations(self, asset: str) -> int:
        return self._confirmations.get(asset, DEFAULT_CONFIRMATIONS)

    def fee_cap_minor(self, asset: str) -> int:
        """Return the transfer's gas limit times the per-gas cap: the most it can ever cost."""
        return self._gas(asset) * self._fee_cap_wei

    def anchor_wallet(self, wallet_id: int, name: str, address: str) -> dict[str, object]:
        return {
            "name": name,
            "chain": self.chain.value,
            "network": self.network,
            "chain_id": self._chain_id,
            "address": to_checksum_address(address),
            "derivation_path": DEFAULT_COLD_PATH,
            "min_approvals": DEFAULT_MIN_APPROVALS,
        }

    def _gas(self, asset: str) -> int:
        return NATIVE_TRANSFER_GAS if asset == self.adapter.native_asset else TOKEN_TRANSFER_GAS

    def unsigned(self, request: ColdRequest, pending: Sequence[Bundle], replacing: Bundle | None) -> Unsigned:
        """Build the EIP-1559 transaction paying ``request`` from the cold address."""
        destination = _checksummed(request.destination)
        sender = to_checksum_address(request.source_address)
        chain_nonce = self.adapter.nonce(sender)
        if replacing is not None:
            nonce = _eth(replacing).nonce
            if nonce < chain_nonce:
                raise BundleError(
                    BundleCode.REQUEST_NOT_READY,
                    f"nonce {nonce} of the expired bundle {replacing.body.bundle_id} is already used on "
                    "chain; find out whether its signed transaction was broadcast before exporting again",
                )
        else:
            taken = [_eth(b).nonce + 1 for b in pending if _eth(b).sender == sender]
            nonce = max([chain_nonce, *taken])
        quote = self.adapter.fee_quote()
        max_fee = min(quote.max_fee_per_gas * FEE_HEADROOM, self._fee_cap_wei)
        tip = min(quote.max_priority_fee_per_gas, max_fee)
        if request.asset == self.adapter.native_asset:
            to, value, data, gas = destination, request.amount_minor, b"", NATIVE_TRANSFER_GAS
        else:
            to = to_checksum_address(self.adapter.token_address(request.asset))
            value, data, gas = 0, transfer_calldata(destination, request.amount_minor), TOKEN_TRANSFER_GAS
        tx = EthereumTransaction(
            chain_id=self._chain_id,
            nonce=nonce,
            sender=sender,
            to=to,
            value_wei=value,
            data=data,
            gas_limit=gas,
            max_fee_per_gas_wei=max_fee,
            max_priority_fee_per_gas_wei=tip,
        )
        return Unsigned(tx, self.fee_cap_minor(request.asset))

    def finish(self, bundle: Bundle, signed: Sequence[SignedBundle]) -> Finished | None:
        """Check the one signature (Ethereum cold wallets are single-key) and return the raw transaction."""
        if len(signed) != 1:
            raise SignerError(
                SignerCode.SIGNED_MISMATCH, f"an Ethereum bundle takes one signed result, got {len(signed)}"
            )
        check_signed(bundle, signed[0])
        raw = signed[0].raw_transaction
        assert raw is not None
        return Finished(raw, Web3.to_hex(Web3.keccak(raw)))


def _eth(bundle: Bundle) -> EthereumTransaction:
    tx = bundle.body.transaction
    assert isinstance(tx, EthereumTransaction), f"bundle {bundle.body.bundle_id} is not an Ethereum bundle"
    return tx


def _checksummed(address: str) -> str:
    """Return ``address`` if it is in EIP-55 form: the approvals bind the exact text the signer compares."""
    try:
        checksum: str = to_checksum_address(address)
    except ValueError:
        checksum = ""
    if checksum != address:
        raise BundleError(
            BundleCode.REQUEST_MISMATCH,
            f"destination {address[:80]} is not in EIP-55 checksum form ({checksum or 'not an address'}); "
            "approvals bind the exact address text, and the offline signer compares it with the "
            "transaction's checksummed address",
        )
    return address

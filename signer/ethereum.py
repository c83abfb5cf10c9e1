"""Ethereum: check an EIP-1559 transaction against the intent, and sign it.

Native ETH: `to` is the destination, `value` the amount, no calldata.
ERC-20 tokens: `to` is the token contract named in the trust anchors (not
in the bundle), `value` is zero, and the calldata is exactly
`transfer(destination, amount)`. The fee cap bounds gas limit x max fee per gas.
"""

from __future__ import annotations

from eth_account import Account
from eth_utils.address import to_checksum_address

from signer.anchors import AssetLimits, EthereumWallet
from signer.bitcoin import root_key
from signer.bundle import EthereumTransaction, Intent
from signer.checks import TxCheck
from signer.results import SignerCode, SignerError
from signer.wire import transaction_dict

ERC20_TRANSFER_SELECTOR = bytes.fromhex("a9059cbb")
ERC20_TRANSFER_BYTES = 4 + 32 + 32
NATIVE_TRANSFER_GAS = 21_000
# An ERC-20 transfer(): about 35,000-65,000 gas on mainnet tokens; more suggests a fee padded on purpose.
MAX_USUAL_TOKEN_GAS = 100_000
_ADDRESS_PADDING = bytes(12)


def encode_erc20_transfer(destination: str, amount_minor: int) -> bytes:
    """Return the calldata of `transfer(destination, amount_minor)`."""
    address = bytes.fromhex(to_checksum_address(destination)[2:])
    return ERC20_TRANSFER_SELECTOR + _ADDRESS_PADDING + address + amount_minor.to_bytes(32, "big")


def decode_erc20_transfer(data: bytes) -> tuple[str, int] | None:
    """Return (destination, amount) if `data` is exactly a well-formed `transfer` call, else None."""
    if (
        len(data) != ERC20_TRANSFER_BYTES
        or data[:4] != ERC20_TRANSFER_SELECTOR
        or data[4:16] != _ADDRESS_PADDING
    ):
        return None
    return to_checksum_address(data[16:36]), int.from_bytes(data[36:68], "big")


def check_ethereum(
    intent: Intent, tx: EthereumTransaction, wallet: EthereumWallet, asset: AssetLimits
) -> TxCheck:
    """Compare the transaction with the intent and the wallet; return refusals and facts."""
    check = TxCheck()
    if tx.chain_id != wallet.chain_id:
        check.refuse(
            SignerCode.CHAIN_ID_MISMATCH,
            f"transaction chain id is {tx.chain_id}, wallet {wallet.name} is on chain {wallet.chain_id}",
        )
    if tx.sender != wallet.address:
        check.refuse(
            SignerCode.SENDER_MISMATCH,
            f"transaction is from {tx.sender}, wallet {wallet.name} is {wallet.address}",
        )
    if asset.contract is None:
        _check_native(intent, tx, check)
    else:
        _check_token(intent, tx, asset.contract, check)
    check.fact(
        f"fee: at most {tx.max_fee_wei} wei = gas limit {tx.gas_limit} x max fee "
        f"{tx.max_fee_per_gas_wei} wei "
        f"(cap {intent.fee_cap_minor} wei); nonce {tx.nonce}; chain id {tx.chain_id}"
    )
    check.fee_minor = tx.max_fee_wei
    usual_gas = NATIVE_TRANSFER_GAS if asset.contract is None else MAX_USUAL_TOKEN_GAS
    if tx.gas_limit > usual_gas:
        check.warn(
            f"HIGH GAS LIMIT: {tx.gas_limit:,} gas, a {asset.asset} transfer needs at most "
            f"{usual_gas:,}; the unused gas is not charged, but the fee cap was sized for it."
        )
    if tx.max_fee_wei > intent.fee_cap_minor:
        check.refuse(
            SignerCode.FEE_OVER_CAP,
            f"gas limit x max fee per gas is {tx.max_fee_wei} wei, "
            f"above the cap of {intent.fee_cap_minor} wei",
        )
    return check


def _check_native(intent: Intent, tx: EthereumTransaction, check: TxCheck) -> None:
    if tx.to != intent.destination:
        check.refuse(
            SignerCode.DESTINATION_MISMATCH, f"transaction pays {tx.to}, intent says {intent.destination}"
        )
    if tx.value_wei != intent.amount_minor:
        check.refuse(
            SignerCode.AMOUNT_MISMATCH,
            f"transaction value is {tx.value_wei} wei, intent says {intent.amount_minor}",
        )
    if tx.data:
        check.refuse(
            SignerCode.CALLDATA_MISMATCH, f"a native transfer must have no calldata, has {len(tx.data)} bytes"
        )
    check.fact(f"transaction: {tx.value_wei} wei to {tx.to}")


def _check_token(intent: Intent, tx: EthereumTransaction, contract: str, check: TxCheck) -> None:
    if tx.to != contract:
        check.refuse(
            SignerCode.DESTINATION_MISMATCH,
            f"transaction calls {tx.to}, the {intent.asset} contract is {contract}",
        )
    if tx.value_wei != 0:
        check.refuse(SignerCode.AMOUNT_MISMATCH, f"a token transfer must send 0 wei, sends {tx.value_wei}")
    decoded = decode_erc20_transfer(tx.data)
    if decoded is None:
        check.refuse(SignerCode.CALLDATA_MISMATCH, "calldata is not exactly transfer(address,uint256)")
        return
    destination, amount_minor = decoded
    check.fact(f"transaction: {intent.asset} transfer({destination}, {amount_minor}) on contract {tx.to}")
    if destination != intent.destination:
        check.refuse(
            SignerCode.DESTINATION_MISMATCH, f"calldata pays {destination}, intent says {intent.destination}"
        )
    if amount_minor != intent.amount_minor:
        check.refuse(
            SignerCode.AMOUNT_MISMATCH,
            f"calldata amount is {amount_minor}, intent says {intent.amount_minor}",
        )


def ethereum_private_key(seed: bytes, path: str) -> bytes:
    """Return the secp256k1 key at `path` (BIP32 from the BIP39 seed); callers must not keep it."""

    secret: bytes = root_key(seed, "main").derive(path).key.secret
    assert len(secret) == 32
    return secret


def ethereum_address(seed: bytes, path: str) -> str:
    return str(Account.from_key(ethereum_private_key(seed, path)).address)


def sign_ethereum(tx: EthereumTransaction, wallet: EthereumWallet, seed: bytes) -> tuple[str, str]:
    """Sign; return (raw signed transaction 0x-hex, transaction hash 0x-hex)."""
    private_key = ethereum_private_key(seed, wallet.derivation_path)
    account = Account.from_key(private_key)
    if account.address != wallet.address:
        raise SignerError(
            SignerCode.KEY_NOT_IN_WALLET,
            f"this signer's key at {wallet.derivation_path} is {account.address}, wallet {wallet.name} is "
            f"{wallet.address}",
        )
    signed = account.sign_transaction(transaction_dict(tx))
    return "0x" + bytes(signed.raw_transaction).hex(), "0x" + bytes(signed.hash).hex()

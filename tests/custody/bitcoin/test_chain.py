"""The embedded regtest chain validates what it accepts; the RPC client speaks Core's protocol."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest
from embit import ec
from embit.descriptor import Descriptor
from embit.script import Script, p2wpkh
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

from custody.chains.adapter import ChainCode, ChainError
from custody.chains.bitcoin import transaction as btx
from custody.chains.bitcoin.adapter import BitcoinAdapter
from custody.chains.bitcoin.backend import RpcError
from custody.chains.bitcoin.coin_selection import Coin, Shape, select_coins
from custody.chains.bitcoin.network import network, normalize_address
from custody.chains.bitcoin.regtest import RegtestChain
from custody.chains.bitcoin.rpc import BitcoinRpc

from ...signer.helpers import seed
from .helpers import DESTINATION, REGTEST, WORLD
from .rpc_standin import RpcStandin

KEY = ec.PrivateKey(hashlib.sha256(b"test key").digest())
ADDRESS = p2wpkh(KEY.get_public_key()).address(REGTEST.embit)


@pytest.fixture
def chain() -> RegtestChain:
    chain = RegtestChain()
    chain.mine(101)
    return chain


def _coin(chain: RegtestChain, amount: int = 100_000, address: str = ADDRESS) -> tuple[str, int]:
    txid = chain.faucet_send(address, amount)
    chain.mine(1)
    return txid, 0


def _spend(
    outpoint: tuple[str, int],
    value: int,
    outputs: list[tuple[str, int]],
    key: ec.PrivateKey = KEY,
    sequence: int = 0xFFFFFFFD,
) -> Transaction:
    tx = Transaction(
        vin=[TransactionInput(bytes.fromhex(outpoint[0]), outpoint[1], sequence=sequence)],
        vout=[TransactionOutput(v, Script(btx_script(a))) for a, v in outputs],
    )
    btx.sign_p2wpkh(tx, 0, value, key)
    return tx


def btx_script(address: str) -> bytes:
    from custody.chains.bitcoin.network import script_of

    return bytes(script_of(address).data)


def _reason(chain: RegtestChain, tx: Transaction) -> str:
    with pytest.raises(RpcError) as error:
        chain.sendrawtransaction(tx.serialize().hex())
    return error.value.rpc_message


def test_valid_p2wpkh_spend_is_accepted_and_mined(chain: RegtestChain) -> None:
    coin = _coin(chain)
    tx = _spend(coin, 100_000, [(DESTINATION, 99_000)])
    assert chain.sendrawtransaction(tx.serialize().hex()) == tx.txid().hex()
    chain.mine(1)
    assert chain.utxo_balance(DESTINATION) == 99_000


def test_wrong_key_signature_is_rejected(chain: RegtestChain) -> None:
    coin = _coin(chain)
    other = ec.PrivateKey(hashlib.sha256(b"other").digest())
    assert "public key does not hash" in _reason(chain, _spend(coin, 100_000, [(DESTINATION, 99_000)], other))


def test_signature_over_other_amount_is_rejected(chain: RegtestChain) -> None:
    coin = _coin(chain)
    tx = _spend(coin, 100_001, [(DESTINATION, 99_000)])  # BIP143 commits to the input amount
    assert "signature does not verify" in _reason(chain, tx)


def test_missing_and_double_spent_inputs_are_rejected(chain: RegtestChain) -> None:
    assert _reason(chain, _spend(("ab" * 32, 0), 100_000, [(DESTINATION, 99_000)])) == (
        "bad-txns-inputs-missingorspent"
    )
    coin = _coin(chain)
    chain.sendrawtransaction(_spend(coin, 100_000, [(DESTINATION, 99_000)]).serialize().hex())
    chain.mine(1)
    assert _reason(chain, _spend(coin, 100_000, [(DESTINATION, 98_000)])) == "bad-txns-inputs-missingorspent"


def test_outputs_above_inputs_dust_and_low_fee_are_rejected(chain: RegtestChain) -> None:
    coin = _coin(chain)
    assert _reason(chain, _spend(coin, 100_000, [(DESTINATION, 100_001)])) == "bad-txns-in-belowout"
    assert _reason(chain, _spend(coin, 100_000, [(DESTINATION, 293), (ADDRESS, 90_000)])) == "dust"
    assert _reason(chain, _spend(coin, 100_000, [(DESTINATION, 99_990)])).startswith("min relay fee not met")


def test_replacement_needs_rbf_signal_and_a_higher_fee(chain: RegtestChain) -> None:
    coin = _coin(chain)
    final = _spend(coin, 100_000, [(DESTINATION, 99_000)], sequence=0xFFFFFFFF)
    chain.sendrawtransaction(final.serialize().hex())
    assert _reason(chain, _spend(coin, 100_000, [(DESTINATION, 98_000)])) == "txn-mempool-conflict"
    other = _coin(chain, 100_000)
    first = _spend(other, 100_000, [(DESTINATION, 99_000)])
    chain.sendrawtransaction(first.serialize().hex())
    assert "insufficient fee" in _reason(chain, _spend(other, 100_000, [(DESTINATION, 98_950)]))
    bumped = _spend(other, 100_000, [(DESTINATION, 98_000)])
    chain.sendrawtransaction(bumped.serialize().hex())
    assert first.txid().hex() not in chain.mempool_txids() and bumped.txid().hex() in chain.mempool_txids()


def test_immature_coinbase_cannot_be_spent() -> None:
    chain = RegtestChain()
    chain.mine(1, address=ADDRESS)
    coinbase = chain.getblock(chain.getblockhash(1), 2)["tx"][0]["txid"]
    chain.mine(50)
    reason = _reason(chain, _spend((coinbase, 0), 50 * 10**8, [(DESTINATION, 10**8)]))
    assert reason == "bad-txns-premature-spend-of-coinbase"


def test_p2wsh_two_of_three_needs_two_valid_signatures(chain: RegtestChain) -> None:
    descriptor = Descriptor.from_string(WORLD.descriptor)
    derived = descriptor.derive(0, branch_index=0)
    address = derived.script_pubkey().address(REGTEST.embit)
    coin = _coin(chain, 200_000, address)
    tx = Transaction(
        vin=[TransactionInput(bytes.fromhex(coin[0]), 0, sequence=0xFFFFFFFD)],
        vout=[TransactionOutput(199_000, Script(btx_script(DESTINATION)))],
    )
    script = derived.witness_script()
    digest = tx.sighash_segwit(0, script, 200_000, SIGHASH.ALL)
    from signer.bitcoin import root_key

    keys = {}
    for n in range(3):
        root = root_key(seed(n), "regtest")
        for key in descriptor.keys:
            if key.origin.fingerprint == root.my_fingerprint:
                child = root.derive(key.origin.derivation).derive([0, 0])
                keys[child.key.get_public_key().sec()] = child.key
    ordered = [keys[pub] for pub in btx.parse_multisig(script.data)[1]]  # type: ignore[index]
    sigs = [k.sign(digest).serialize() + bytes([SIGHASH.ALL]) for k in ordered]
    from embit.script import Witness

    tx.vin[0].witness = Witness([b"", sigs[0], script.data])
    assert "signatures" in _reason(chain, tx)
    tx.vin[0].witness = Witness([b"", sigs[1], sigs[0], script.data])  # wrong order: CHECKMULTISIG fails
    assert "does not verify" in _reason(chain, tx)
    tx.vin[0].witness = Witness([b"", sigs[0], sigs[2], script.data])
    assert chain.sendrawtransaction(tx.serialize().hex()) == tx.txid().hex()


def test_address_validation_per_network() -> None:
    regtest, mainnet = network("regtest"), network("mainnet")
    assert normalize_address(DESTINATION.upper(), regtest) == DESTINATION
    with pytest.raises(ChainError) as error:
        normalize_address(DESTINATION[:-1] + "1", regtest)
    assert error.value.code is ChainCode.INVALID_ADDRESS and "checksum" in error.value.message
    with pytest.raises(ChainError) as error:
        normalize_address(DESTINATION, mainnet)
    assert "mainnet" in error.value.message
    assert normalize_address("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", mainnet).startswith("bc1")
    assert normalize_address("mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn", network("testnet"))


def test_coin_selection_exact_match_change_and_dust() -> None:
    shape = Shape(2, 31, 31, 68, 294)
    coins = [Coin("a", 100_000, 68), Coin("b", 50_000, 68), Coin("c", 30_000, 68)]
    exact = select_coins(coins, 49_700, shape)
    assert exact is not None and exact.change_sat == 0 and [c.id for c in exact.coins] == ["b"]
    change = select_coins(coins, 120_000, shape)
    assert change is not None and change.change_sat >= 294 and change.algorithm == "largest_first"
    no_dust = select_coins([Coin("d", 10_500, 68)], 10_000, shape)
    assert no_dust is not None and no_dust.change_sat == 0 and no_dust.fee_sat == 500
    assert select_coins(coins, 180_000, shape) is None


@pytest.fixture
def standin(chain: RegtestChain) -> Iterator[RpcStandin]:
    server = RpcStandin(chain)
    yield server
    server.close()


def test_rpc_client_against_standin_matches_the_embedded_adapter(standin: RpcStandin) -> None:
    rpc = BitcoinRpc(standin.url.replace("http://", "http://rpcuser:rpcpass@"))
    txid = standin.chain.faucet_send(DESTINATION, 123_456)
    standin.chain.mine(1)
    over_rpc, embedded = BitcoinAdapter(rpc, REGTEST), BitcoinAdapter(standin.chain, REGTEST)
    height = standin.chain.height
    assert over_rpc.head_height() == height
    assert over_rpc.block(height) == embedded.block(height)
    assert over_rpc.balance(DESTINATION, "BTC") == 123_456
    assert over_rpc.receipt(txid) == embedded.receipt(txid)
    assert over_rpc.fee_rate_sat_vb() == 2
    assert over_rpc.block_hash(height + 5) is None
    with pytest.raises(RpcError) as error:
        rpc.sendrawtransaction("00")
    assert error.value.rpc_code == -22
    with pytest.raises(RpcError) as error:
        rpc.call("stop")
    assert error.value.rpc_code == -32601
    assert (
        over_rpc.broadcast(bytes.fromhex(rpc.getrawtransaction(txid))) == txid
    )  # already mined: not an error


def test_rpc_client_refused_credentials_and_unreachable_node(standin: RpcStandin) -> None:
    with pytest.raises(ChainError) as error:
        BitcoinRpc(standin.url.replace("http://", "http://rpcuser:wrong@")).getblockchaininfo()
    assert error.value.code is ChainCode.NODE_UNAVAILABLE and "credentials" in error.value.message
    with pytest.raises(ChainError) as error:
        BitcoinRpc("http://127.0.0.1:9/", timeout_s=2).getblockchaininfo()
    assert error.value.code is ChainCode.NODE_UNAVAILABLE


@pytest.mark.skipif(
    not os.environ.get("BITCOIND_RPC_URL"), reason="set BITCOIND_RPC_URL to a regtest bitcoind"
)
def test_real_bitcoind_answers_the_methods_we_use() -> None:
    adapter = BitcoinAdapter(BitcoinRpc(os.environ["BITCOIND_RPC_URL"]), REGTEST)
    height = adapter.head_height()
    assert adapter.block_hash(height) is not None
    assert adapter.block(height).height == height
    assert adapter.test_accept(b"\x00") is not None

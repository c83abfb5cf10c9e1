"""The cold wallet: a 2-of-3 P2WSH sortedmulti descriptor whose keys live on three offline signers.

Here it is watch-only: the descriptor (with key origins) is stored, its
addresses are derived from it (receive ``0/i``, change ``1/i``) and recorded
as addresses of the cold wallet, and spends are prepared as unsigned PSBTs
(:func:`prepare_spend`) that go to the signers in a bundle. The bundle service
(custody.bundles, its Bitcoin part custody.bundles.bitcoin) calls it, exports,
imports the cosigners' results, broadcasts and owns the ledger entries.
Preparing a spend locks its coins to the record that will carry it
(``cold:<kind>:<request id>``) until the transaction spending them is mined.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from embit.descriptor import Descriptor  # type: ignore[import-untyped, unused-ignore]
from embit.psbt import PSBT  # type: ignore[import-untyped, unused-ignore]
from embit.transaction import Transaction  # type: ignore[import-untyped, unused-ignore]
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody.chains.bitcoin import transaction as btx
from custody.chains.bitcoin.adapter import BitcoinAdapter
from custody.chains.bitcoin.coin_selection import Coin, Shape, select_coins
from custody.chains.bitcoin.models import BitcoinColdSpend, BitcoinColdWallet, BitcoinUtxo
from custody.chains.bitcoin.network import address_of
from custody.chains.bitcoin.psbt import Utxo, build_psbt
from custody.chains.bitcoin.utxo import UtxoSet
from custody.wallets.codes import WalletCode, WalletError
from custody.wallets.models import Wallet, WalletAddress
from custody.wallets.wallet import Temperature, WalletInfo, WalletRegistry

REQUIRED_SIGNATURES = 2
COSIGNERS = 3


class SpendStatus:
    """Where a cold spend stands."""

    # The spend's row only records the prepared PSBT; where the transfer stands is the bundle's
    # state (custody.bundles: cold_bundles), so the row stays "prepared".
    PREPARED = "prepared"  # PSBT built, coins locked


@dataclass(frozen=True, slots=True)
class ColdSpendView:
    """A prepared cold spend."""

    id: str
    record_id: str
    destination: str
    amount_sat: int
    fee_sat: int
    change_address: str | None
    psbt: str
    status: str
    txid: str | None


def _view(row: BitcoinColdSpend) -> ColdSpendView:
    return ColdSpendView(
        row.id,
        row.record_id,
        row.destination,
        row.amount_sat,
        row.fee_sat,
        row.change_address,
        row.psbt,
        row.status,
        row.txid,
    )


def parse_cold_descriptor(text: str) -> Descriptor:
    """Parse and check a ``wsh(sortedmulti(2, k1, k2, k3))`` descriptor with key origins and ranges."""
    try:
        descriptor = Descriptor.from_string(text)
    except Exception as exc:  # embit raises assorted errors on bad descriptors
        raise WalletError(WalletCode.INVALID_DESTINATION, f"descriptor does not parse: {exc}") from None
    keys = descriptor.keys
    shape_ok = descriptor.is_segwit and not descriptor.is_wrapped and descriptor.is_basic_multisig
    if (
        not shape_ok
        or not descriptor.is_sorted
        or len(keys) != COSIGNERS
        or any(k.origin is None for k in keys)
        or not text.replace(" ", "").startswith(f"wsh(sortedmulti({REQUIRED_SIGNATURES},")
    ):
        raise WalletError(
            WalletCode.INVALID_DESTINATION,
            "cold descriptor must be wsh(sortedmulti(2, three keys with origins))",
        )
    return descriptor


class ColdWallet:
    """Register the cold descriptor, derive its addresses, prepare PSBT spends."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        wallets: WalletRegistry,
        adapter: BitcoinAdapter,
        utxos: UtxoSet,
        clock: Callable[[], int],
    ) -> None:
        self._sessions = sessions
        self._wallets = wallets
        self._adapter = adapter
        self.adapter = adapter
        self._utxos = utxos
        self._clock = clock

    @property
    def network_name(self) -> str:
        """Return the network as the signer bundle names it (main / test / regtest)."""
        return self._adapter.network.embit_name

    def created_ms(self, spend_id: str) -> int:
        """Return when a spend was prepared."""
        with self._sessions() as session:
            row = session.get(BitcoinColdSpend, spend_id)
            if row is None:
                raise WalletError(WalletCode.PROPOSAL_NOT_FOUND, f"cold spend {spend_id!r} does not exist")
            return row.created_ms

    def locked_coins(self, record_id: str) -> list[BitcoinUtxo]:
        """Return the coins locked to a cold spend's record."""
        with self._sessions() as session:
            return self._utxos.locked_by(session, record_id)

    def register(self, name: str, descriptor_text: str) -> WalletInfo:
        """Register the watch-only cold wallet by descriptor; its receive address 0 takes sweeps."""
        descriptor = parse_cold_descriptor(descriptor_text)
        receive = self.address(descriptor, 0, 0)
        wallet = self._wallets.register_cold(self._adapter.chain, name, receive)
        with self._sessions.begin() as session:
            row = session.get(BitcoinColdWallet, wallet.id)
            if row is None:
                session.add(
                    BitcoinColdWallet(
                        wallet_id=wallet.id,
                        network=self._adapter.network.name,
                        descriptor=descriptor_text,
                        next_change=0,
                    )
                )
                address = session.scalar(select(WalletAddress).where(WalletAddress.wallet_id == wallet.id))
                assert address is not None
                address.path, address.derivation_index = "0/0", 0
            elif row.descriptor != descriptor_text:
                raise WalletError(WalletCode.WALLET_EXISTS, f"cold wallet {name} has another descriptor")
        return wallet

    def descriptor(self, wallet_id: int) -> str:
        """Return the stored descriptor text of a cold wallet."""
        with self._sessions() as session:
            row = session.get(BitcoinColdWallet, wallet_id)
            if row is None:
                raise WalletError(WalletCode.WALLET_NOT_FOUND, f"wallet {wallet_id} has no descriptor")
            return row.descriptor

    def address(self, descriptor: Descriptor, branch: int, index: int) -> str:
        """Return the P2WSH address at ``branch/index`` of the descriptor."""
        script = descriptor.derive(index, branch_index=branch).script_pubkey()
        address = address_of(script, self._adapter.network)
        assert address is not None
        return address

    def prepare_spend(
        self,
        spend_id: str,
        record_id: str,
        destination: str,
        amount_sat: int,
        fee_rate_sat_vb: int,
        max_fee_sat: int,
    ) -> ColdSpendView:
        """Select and lock cold coins, and build the unsigned PSBT (idempotent by ``spend_id``).

        A spend prepared before PSBTs carried their inputs' previous
        transactions gets them added (same inputs and outputs, same
        transaction): the offline signer refuses an input it cannot prove.
        """
        with self._sessions() as session:
            existing = session.get(BitcoinColdSpend, spend_id)
            found = None if existing is None else _view(existing)
        if found is not None:
            completed = self._with_previous_transactions(found.psbt)
            if completed == found.psbt:
                return found
            with self._sessions.begin() as session:
                row = session.get(BitcoinColdSpend, spend_id)
                assert row is not None
                row.psbt, row.updated_ms = completed, self._clock()
                return _view(row)
        cold = self._wallets.one(self._adapter.chain, Temperature.COLD)
        descriptor_text = self.descriptor(cold.id)
        descriptor = parse_cold_descriptor(descriptor_text)
        destination = self._adapter.normalize_address(destination)
        dest_script = self._adapter.script_of(destination)
        head = self._adapter.head_height()
        now = self._clock()
        with self._sessions.begin() as session:
            coins = self._utxos.spendable(session, [cold.id], head)
            shape = Shape(
                fee_rate_sat_vb,
                btx.output_vbytes(dest_script),
                btx.P2WSH_OUTPUT_VB,
                btx.P2WSH_2OF3_INPUT_VB,
                btx.DUST_P2WSH_SAT,
            )
            selection = select_coins(
                [Coin(c.id, c.amount_sat, btx.P2WSH_2OF3_INPUT_VB) for c in coins], amount_sat, shape
            )
            if selection is None or selection.fee_sat > max_fee_sat:
                have = sum(c.amount_sat for c in coins)
                raise WalletError(
                    WalletCode.INSUFFICIENT_COINS,
                    f"cold wallet has {have} sat in free coins; {amount_sat} sat + fee at "
                    f"{fee_rate_sat_vb} sat/vB (cap {max_fee_sat} sat) cannot be paid",
                )
            chosen = sorted(c.id for c in selection.coins)
            if not self._utxos.lock(session, record_id, chosen, now):
                raise WalletError(
                    WalletCode.TRANSACTION_CONFLICT, "a cold coin was taken concurrently; retry"
                )
            by_id = {c.id: c for c in coins}
            paths = dict(
                session.execute(
                    select(WalletAddress.address, WalletAddress.path).where(
                        WalletAddress.wallet_id == cold.id
                    )
                )
                .all()
            )
            utxos = []
            for coin_id in chosen:
                coin = by_id[coin_id]
                branch, index = (int(part) for part in (paths[coin.address] or "").split("/"))
                previous = self._adapter.raw_transaction(coin.txid)
                utxos.append(Utxo(coin.txid, coin.vout, coin.amount_sat, branch, index, previous))
            change_index = change_address = None
            if selection.change_sat:
                change_index, change_address = self._next_change(session, cold.id, descriptor)
            psbt = build_psbt(
                descriptor_text,
                self._adapter.network.embit_name,
                utxos,
                destination,
                amount_sat,
                selection.fee_sat,
                change_index or 0,
            )
            row = BitcoinColdSpend(
                id=spend_id,
                record_id=record_id,
                wallet_id=cold.id,
                destination=destination,
                amount_sat=amount_sat,
                fee_sat=selection.fee_sat,
                change_index=change_index,
                change_address=change_address,
                change_path=None if change_index is None else f"1/{change_index}",
                psbt=psbt,
                bundle=None,
                status=SpendStatus.PREPARED,
                txid=None,
                created_ms=now,
                updated_ms=now,
            )
            session.add(row)
        return _view(row)

    def _with_previous_transactions(self, psbt_text: str) -> str:
        """Return the PSBT with every input's previous transaction (non_witness_utxo) filled in."""
        psbt = PSBT.from_string(psbt_text)
        missing = [inp for inp in psbt.inputs if inp.non_witness_utxo is None]
        if not missing:
            return psbt_text
        for inp in missing:
            inp.non_witness_utxo = Transaction.parse(self._adapter.raw_transaction(inp.txid.hex()))
        return str(psbt.to_string())

    def _next_change(self, session: Session, wallet_id: int, descriptor: Descriptor) -> tuple[int, str]:
        state = session.scalar(
            select(BitcoinColdWallet).where(BitcoinColdWallet.wallet_id == wallet_id).with_for_update()
        )
        assert state is not None
        index = state.next_change
        state.next_change = index + 1
        address = self.address(descriptor, 1, index)
        wallet = session.get(Wallet, wallet_id)
        assert wallet is not None
        session.add(
            WalletAddress(
                wallet_id=wallet_id,
                chain=wallet.chain,
                address=address,
                owner=None,
                path=f"1/{index}",
                derivation_index=index,
                created_ms=self._clock(),
            )
        )
        return index, address

    def get(self, spend_id: str) -> ColdSpendView:
        """Return a prepared spend."""
        with self._sessions() as session:
            row = session.get(BitcoinColdSpend, spend_id)
            if row is None:
                raise WalletError(WalletCode.PROPOSAL_NOT_FOUND, f"cold spend {spend_id!r} does not exist")
            return _view(row)

"""The wallet registry: create hot/deposit wallets (sealed HD seeds), register cold ones,
hand out deposit addresses, name the ledger accounts, and open a hot seed to sign.

Chain-neutral: each chain registers its :class:`AddressScheme` (how a seed
becomes an account xpub and an xpub becomes addresses) and signs through
:meth:`WalletRegistry.use_seed` (``custody.chains.ethereum.keys.sign_transaction``,
the Bitcoin spender's P2WPKH inputs).

Key handling: a seeded wallet's 32-byte seed is envelope-encrypted by the
keystore (``seal_seed`` under an AES-256-GCM KEK) and only the sealed blob is
stored. :meth:`WalletRegistry.use_seed` opens the seed in memory for one
callback that derives the keys it needs and keeps nothing. Python cannot zero
immutable ``bytes``, so the guarantee is "never persisted, logged or returned",
not "erased from RAM"; a Vault/HSM-resident signer can replace this later.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from custody.keystore import Keystore, KeystoreError, KeystoreErrorCode, KeyType
from custody.ledger.entry import AccountKind
from custody.ledger.service import Ledger
from custody.wallets import hd
from custody.wallets.codes import WalletCode, WalletError
from custody.wallets.models import Wallet, WalletAddress

PLATFORM_OWNER = "platform"
NETWORK_FEES_OWNER = "network-fees"
DEFAULT_KEK = "wallet-seeds"
T = TypeVar("T")


class AddressScheme(Protocol):
    """How a chain turns a seed into an account xpub and an xpub into addresses."""

    def account_path(self) -> str:
        """Return the hardened account path (BIP44 ``m/44'/60'/0'``, BIP84 ``m/84'/0'/0'``)."""
        ...

    def account_xpub(self, seed: bytes) -> str:
        """Return the xpub of the account key of ``seed``."""
        ...

    def address(self, xpub: str, change: int, index: int) -> str:
        """Return the address at ``xpub/change/index``."""
        ...


class Temperature(StrEnum):
    """How a wallet's keys are held."""

    HOT = "hot"  # seed sealed by the keystore; signs online within policy
    DEPOSIT = "deposit"  # seed sealed by the keystore; one address per user; signs consolidations
    COLD = "cold"  # watch-only here: keys exist only on the offline signer


@dataclass(frozen=True, slots=True)
class WalletInfo:
    """A wallet as the rest of the platform sees it: never the seed."""

    id: int
    name: str
    chain: str
    temperature: Temperature
    account_path: str | None
    account_xpub: str | None
    next_index: int

    @property
    def ledger_owner(self) -> str:
        """Return the owner name of this wallet's ledger accounts."""
        return f"wallet.{self.name}"


@dataclass(frozen=True, slots=True)
class AddressInfo:
    """An address of a wallet, with its BIP32 path and (for deposit addresses) its user."""

    wallet_id: int
    chain: str
    address: str
    owner: str | None
    path: str | None
    index: int | None


@dataclass(frozen=True, slots=True)
class SignedTransaction:
    """Raw signed bytes (public once broadcast) and their transaction id."""

    raw: bytes
    txid: str


def _info(row: Wallet) -> WalletInfo:
    return WalletInfo(row.id, row.name, row.chain, Temperature(row.temperature), row.account_path,
                      row.account_xpub, row.next_index)


def _address(row: WalletAddress) -> AddressInfo:
    return AddressInfo(row.wallet_id, row.chain, row.address, row.owner, row.path, row.derivation_index)


def _seed_aad(name: str) -> bytes:
    return f"strongroom/wallet-seed/{name}".encode()


class WalletRegistry:
    """Wallets, addresses and their ledger accounts."""

    def __init__(self, sessions: sessionmaker[Session], ledger: Ledger, keystore: Keystore,
                 clock: Callable[[], int], schemes: Mapping[str, AddressScheme] | None = None) -> None:
        self._sessions = sessions
        self.ledger = ledger
        self._keystore = keystore
        self._clock = clock
        self._schemes: dict[str, AddressScheme] = dict(schemes or {})

    def add_scheme(self, chain: str, scheme: AddressScheme) -> None:
        """Teach the registry a chain's key and address scheme (each chain's runtime registers one)."""
        self._schemes[chain] = scheme

    # -- creation ---------------------------------------------------------------------------

    def create_seeded(self, chain: str, name: str, temperature: Temperature,
                      kek_name: str = DEFAULT_KEK) -> WalletInfo:
        """Create a hot or deposit wallet with a fresh sealed seed (idempotent by name)."""
        if temperature is Temperature.COLD:
            raise WalletError(WalletCode.WRONG_TEMPERATURE, "a cold wallet has no seed here: register it")
        existing = self.find(name)
        if existing is not None:
            return self._same_or_conflict(existing, chain, temperature)
        scheme = self._scheme(chain)
        self._ensure_kek(kek_name)
        seed = hd.generate_seed()
        path = scheme.account_path()
        sealed = self._keystore.seal_seed(kek_name, seed, _seed_aad(name))
        xpub = scheme.account_xpub(seed)
        del seed
        row = Wallet(name=name, chain=chain, temperature=temperature.value, kek_name=kek_name,
                     sealed_seed=base64.b64encode(sealed).decode(), account_path=path,
                     account_xpub=xpub, next_index=0, created_ms=self._clock())
        try:
            with self._sessions.begin() as session:
                session.add(row)
                if temperature is Temperature.HOT:
                    # The hot wallet signs from one address (index 0): one nonce sequence.
                    session.flush()
                    session.add(self._derive(row, owner=None))
        except IntegrityError:
            found = self.find(name)
            assert found is not None
            return self._same_or_conflict(found, chain, temperature)
        return _info(row)

    def register_cold(self, chain: str, name: str, address: str, xpub: str | None = None) -> WalletInfo:
        """Register a watch-only cold wallet by its (checksummed) address (idempotent)."""
        self._scheme(chain)
        existing = self.find(name)
        if existing is not None:
            return self._same_or_conflict(existing, chain, Temperature.COLD)
        row = Wallet(name=name, chain=chain, temperature=Temperature.COLD.value, kek_name=None,
                     sealed_seed=None, account_path=None, account_xpub=xpub, next_index=0,
                     created_ms=self._clock())
        with self._sessions.begin() as session:
            session.add(row)
            session.flush()
            session.add(WalletAddress(wallet_id=row.id, chain=chain, address=address, owner=None,
                                      path=None, derivation_index=None, created_ms=self._clock()))
        return _info(row)

    def deposit_address(self, wallet_name: str, owner: str) -> AddressInfo:
        """Return ``owner``'s deposit address in the deposit wallet, deriving it on first use."""
        wallet = self.get(wallet_name)
        if wallet.temperature is not Temperature.DEPOSIT:
            raise WalletError(WalletCode.WRONG_TEMPERATURE, f"wallet {wallet_name} is not a deposit wallet")
        found = self._owner_address(wallet.id, owner)
        if found is not None:
            return found
        try:
            with self._sessions.begin() as session:
                row = session.scalar(select(Wallet).where(Wallet.id == wallet.id).with_for_update())
                assert row is not None
                address = self._derive(row, owner=owner)
                session.add(address)
        except IntegrityError:
            pass  # a concurrent request derived it first
        found = self._owner_address(wallet.id, owner)
        assert found is not None
        return found

    def change_address(self, wallet_id: int, session: Session) -> AddressInfo:
        """Derive a fresh change address (``/1/i``) of a seeded wallet inside the caller's transaction.

        Receive and change addresses share the wallet's index counter, so
        each index is used on one branch only (a gap on the other).
        """
        row = session.scalar(select(Wallet).where(Wallet.id == wallet_id).with_for_update())
        if row is None or row.account_xpub is None:
            raise WalletError(WalletCode.WRONG_TEMPERATURE, f"wallet {wallet_id} derives no addresses")
        address = self._derive(row, owner=None, change=1)
        session.add(address)
        session.flush()
        return _address(address)

    def add_address(self, wallet_id: int, address: str, path: str | None, index: int | None) -> AddressInfo:
        """Record an address of a watch-only wallet (a cold multisig address from its descriptor)."""
        wallet = self.get_by_id(wallet_id)
        with self._sessions.begin() as session:
            found = session.scalar(select(WalletAddress).where(
                WalletAddress.chain == wallet.chain, WalletAddress.address == address))
            if found is not None:
                if found.wallet_id != wallet_id:
                    raise WalletError(WalletCode.WALLET_EXISTS, f"{address} belongs to another wallet")
                return _address(found)
            row = WalletAddress(wallet_id=wallet_id, chain=wallet.chain, address=address, owner=None,
                                path=path, derivation_index=index, created_ms=self._clock())
            session.add(row)
            session.flush()
            return _address(row)

    def _derive(self, row: Wallet, owner: str | None, change: int = 0) -> WalletAddress:
        assert row.account_xpub is not None and row.account_path is not None
        index = row.next_index
        row.next_index = index + 1
        return WalletAddress(
            wallet_id=row.id, chain=row.chain,
            address=self._scheme(row.chain).address(row.account_xpub, change, index), owner=owner,
            path=hd.address_path(row.account_path, index, change), derivation_index=index,
            created_ms=self._clock())

    # -- reads ------------------------------------------------------------------------------

    def find(self, name: str) -> WalletInfo | None:
        """Return the wallet called ``name`` or None."""
        with self._sessions() as session:
            row = session.scalar(select(Wallet).where(Wallet.name == name))
            return None if row is None else _info(row)

    def get(self, name: str) -> WalletInfo:
        """Return the wallet called ``name`` or raise wallet_not_found."""
        found = self.find(name)
        if found is None:
            raise WalletError(WalletCode.WALLET_NOT_FOUND, f"wallet {name!r} does not exist")
        return found

    def get_by_id(self, wallet_id: int) -> WalletInfo:
        """Return the wallet with id ``wallet_id``."""
        with self._sessions() as session:
            row = session.get(Wallet, wallet_id)
            if row is None:
                raise WalletError(WalletCode.WALLET_NOT_FOUND, f"wallet {wallet_id} does not exist")
            return _info(row)

    def list_wallets(self, chain: str | None = None) -> list[WalletInfo]:
        """Return every wallet (of ``chain`` if given) by id."""
        query = select(Wallet).order_by(Wallet.id)
        if chain is not None:
            query = query.where(Wallet.chain == chain)
        with self._sessions() as session:
            return [_info(row) for row in session.scalars(query)]

    def one(self, chain: str, temperature: Temperature) -> WalletInfo:
        """Return the single wallet of ``temperature`` on ``chain``."""
        wallets = [w for w in self.list_wallets(chain) if w.temperature is temperature]
        if len(wallets) != 1:
            raise WalletError(WalletCode.WALLET_NOT_FOUND,
                              f"{chain} has {len(wallets)} {temperature.value} wallets, need exactly 1")
        return wallets[0]

    def addresses(self, wallet_id: int) -> list[AddressInfo]:
        """Return a wallet's addresses by derivation order."""
        with self._sessions() as session:
            rows = session.scalars(select(WalletAddress).where(WalletAddress.wallet_id == wallet_id)
                                   .order_by(WalletAddress.id))
            return [_address(row) for row in rows]

    def primary_address(self, wallet_id: int) -> AddressInfo:
        """Return the first address of a hot or cold wallet (the one it sends from / receives at)."""
        addresses = self.addresses(wallet_id)
        if not addresses:
            raise WalletError(WalletCode.WALLET_NOT_FOUND, f"wallet {wallet_id} has no address")
        return addresses[0]

    def address_index(self, chain: str) -> dict[str, AddressInfo]:
        """Return every known address of ``chain`` keyed by its lowercase form."""
        with self._sessions() as session:
            rows = session.scalars(select(WalletAddress).where(WalletAddress.chain == chain))
            return {row.address.lower(): _address(row) for row in rows}

    def _owner_address(self, wallet_id: int, owner: str) -> AddressInfo | None:
        with self._sessions() as session:
            row = session.scalar(select(WalletAddress).where(
                WalletAddress.wallet_id == wallet_id, WalletAddress.owner == owner))
            return None if row is None else _address(row)

    # -- ledger accounts --------------------------------------------------------------------

    def wallet_account(self, wallet: WalletInfo, asset: str) -> int:
        """Return the id of the wallet's asset account (debit-normal: what it holds on chain)."""
        kind = AccountKind.COLD_WALLET if wallet.temperature is Temperature.COLD else AccountKind.HOT_WALLET
        return self.ledger.ensure_account(wallet.ledger_owner, asset, kind).id

    def platform_account(self, kind: AccountKind, asset: str) -> int:
        """Return the id of a platform account (deposits/withdrawals in flight)."""
        return self.ledger.ensure_account(PLATFORM_OWNER, asset, kind).id

    def network_fees_account(self, asset: str) -> int:
        """Return the id of the external account that receives gas paid to the network."""
        return self.ledger.ensure_account(NETWORK_FEES_OWNER, asset, AccountKind.EXTERNAL).id

    def user_account(self, owner: str, asset: str) -> int:
        """Return the id of ``owner``'s available balance in ``asset``."""
        return self.ledger.ensure_account(owner, asset, AccountKind.USER_AVAILABLE).id

    # -- signing ----------------------------------------------------------------------------

    def use_seed(self, wallet_id: int, action: Callable[[bytes], T], session: Session | None = None) -> T:
        """Open a seeded wallet's seed, call ``action(seed)`` and return what it returns.

        ``action`` must derive what it needs and keep nothing: the seed is
        dropped when it returns (UTXO chains sign several inputs per seed opening).
        """
        if session is None:
            with self._sessions() as own:
                return self.use_seed(wallet_id, action, own)
        row = session.get(Wallet, wallet_id)
        if row is None or row.sealed_seed is None or row.kek_name is None:
            raise WalletError(WalletCode.WRONG_TEMPERATURE, f"wallet {wallet_id} holds no seed")
        seed = self._keystore.open_seed(row.kek_name, base64.b64decode(row.sealed_seed), _seed_aad(row.name))
        try:
            return action(seed)
        finally:
            seed = b""

    # -- helpers ----------------------------------------------------------------------------

    def _ensure_kek(self, kek_name: str) -> None:
        try:
            self._keystore.key_info(kek_name)
        except KeystoreError as exc:
            if exc.code is not KeystoreErrorCode.KEY_NOT_FOUND:
                raise
            try:
                self._keystore.create_key(kek_name, KeyType.AES256_GCM)
            except KeystoreError as again:
                if again.code is not KeystoreErrorCode.KEY_EXISTS:
                    raise

    def _scheme(self, chain: str) -> AddressScheme:
        scheme = self._schemes.get(chain)
        if scheme is None:
            raise WalletError(WalletCode.UNSUPPORTED_ASSET, f"chain was {chain!r}, must be one of "
                              f"{', '.join(self._schemes)}")
        return scheme

    @staticmethod
    def _same_or_conflict(existing: WalletInfo, chain: str, temperature: Temperature) -> WalletInfo:
        if existing.chain != chain or existing.temperature is not temperature:
            raise WalletError(WalletCode.WALLET_EXISTS,
                              f"wallet {existing.name} exists as a {existing.chain} "
                              f"{existing.temperature.value} wallet")
        return existing

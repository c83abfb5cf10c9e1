"""Cold transfers: export an unsigned bundle, import the signed one, broadcast, settle. Chain-neutral.

Bundle states (``cold_bundles.state``)::

    exported --signed result imported--> signed --broadcast--> broadcast --N confirmations--> confirmed
                                                                        --reverted----------> failed
    exported --expired, exported again--> superseded   (the new attempt reuses the nonce / inputs)

Ledger entries, all with ids derived from the request (``cold:<kind>:<request id>``),
so no step can ever be booked twice, whatever the number of bundle attempts
(W = the cold wallet's account, D = withdrawals_in_flight for a withdrawal or
the hot wallet's account for a refill, H = the withdrawal's hold):

    first export: PENDING D -> W  ``...:reserve``   (refused if the cold wallet is short in the ledger)
    confirmed:    POST H, POST ``...:reserve``, SINGLE network-fees -> W(native) ``...:gas``
    reverted:     VOID H, VOID ``...:reserve``, the same gas entry

exactly the hot executor's entries (custody.wallets.withdrawal_executor), so
the cold wallet's account goes down by the amount and the gas and the
reconciliation stays clean.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody import freezes, security_log, withdrawal_halts
from custody.bundles.builder import build_bundle, platform_sign
from custody.bundles.chains import BundleChain, BundleChains, Finished
from custody.bundles.codes import BundleCode, BundleError
from custody.bundles.models import NOTE_MAX_LEN, ColdBundle, ColdBundleSignature
from custody.bundles.requests import (
    EXPORTABLE,
    EXPORTED,
    IN_FLIGHT,
    Opened,
    RefillSource,
    RequestSource,
    WithdrawalSource,
)
from custody.chains.adapter import ChainError, Receipt
from custody.keystore import Keystore, KeystoreError, KeystoreErrorCode, KeyType
from custody.ledger.codes import LedgerCode, LedgerError
from custody.ledger.entry import TransferKind
from custody.ledger.posting import TransferRequest
from custody.wallets.settlement import refusal, settlement_requests
from custody.wallets.wallet import Temperature, WalletRegistry
from custody.withdrawals import service as withdrawals
from policies.approval import APPROVAL_OUTDATED_MESSAGE, SubjectKind
from signer.bundle import Bundle, Intent, RequestRef, signing_message
from signer.results import SignerError
from signer.signed import SignedBundle

log = logging.getLogger(__name__)

PLATFORM_KEY_NAME = "bundle-signing"
DEFAULT_TTL_MS = 24 * 3600 * 1000
MAX_TICK_BUNDLES = 100
MAX_LIST = 500
SUPERSEDED, SIGNED, BROADCAST = "superseded", "signed", "broadcast"
CONFIRMED, FAILED = "confirmed", "failed"
# Bundles whose transaction may still reach the chain: their nonces / inputs are taken.
PENDING_STATES = (EXPORTED, SIGNED, BROADCAST)
ON_CHAIN_STATES = (SIGNED, BROADCAST)
REQUEST_KINDS = {"withdrawal": SubjectKind.WITHDRAWAL, "refill": SubjectKind.REFILL}


@dataclass(frozen=True, slots=True)
class PlatformKey:
    """The platform's Ed25519 bundle key, as the signer's anchors.json lists it."""

    key_id: str
    public_key: bytes

    def to_json(self) -> dict[str, str]:
        return {"key_id": self.key_id, "public_key": self.public_key.hex()}


@dataclass(frozen=True, slots=True)
class BundleView:
    """A bundle and where its transaction stands."""

    bundle_id: str
    chain: str
    request_kind: str
    request_id: str
    attempt: int
    state: str
    digest: str
    expires_at_ms: int
    asset: str
    amount_minor: int
    destination: str
    txid: str | None
    mined_height: int | None
    fee_paid_minor: int | None
    note: str

    def to_json(self) -> dict[str, Any]:
        """Render with amounts as strings."""
        return {
            "bundle_id": self.bundle_id,
            "chain": self.chain,
            "request": {"kind": self.request_kind, "id": self.request_id},
            "attempt": self.attempt,
            "state": self.state,
            "sha256": self.digest,
            "expires_at_ms": self.expires_at_ms,
            "asset": self.asset,
            "amount": str(self.amount_minor),
            "destination": self.destination,
            "txid": self.txid,
            "mined_height": self.mined_height,
            "fee_paid": None if self.fee_paid_minor is None else str(self.fee_paid_minor),
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Exported:
    """An exported bundle: its record and the exact bytes to carry to the signer."""

    view: BundleView
    data: bytes


def _view(row: ColdBundle) -> BundleView:
    return BundleView(
        row.bundle_id,
        row.chain,
        row.request_kind,
        row.request_id,
        row.attempt,
        row.state,
        row.digest,
        row.expires_at_ms,
        row.asset,
        row.amount_minor,
        row.destination,
        row.txid,
        row.mined_height,
        row.fee_paid_minor,
        row.note,
    )


def ledger_prefix(kind: str, request_id: str) -> str:
    """Return the prefix of every ledger transfer id of one cold request."""
    return f"cold:{kind}:{request_id}"


class ColdTransfers:
    """Export, import, broadcast and settle cold transfers on the configured chains."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        wallets: WalletRegistry,
        keystore: Keystore,
        chains: BundleChains,
        clock: Callable[[], int],
        *,
        key_name: str = PLATFORM_KEY_NAME,
        ttl_ms: int = DEFAULT_TTL_MS,
    ) -> None:
        assert 0 < ttl_ms <= 30 * 24 * 3600 * 1000, f"ttl_ms was {ttl_ms}"
        self._sessions = sessions
        self._wallets = wallets
        self._ledger = wallets.ledger
        self._keystore = keystore
        self._chains = chains
        self._clock = clock
        self._key_name = key_name
        self._ttl_ms = ttl_ms
        self._sources: Mapping[str, RequestSource] = {
            "withdrawal": WithdrawalSource(wallets, chains),
            "refill": RefillSource(wallets, chains),
        }

    # -- the platform key -------------------------------------------------------------------

    def platform_key(self) -> PlatformKey:
        """Return the current bundle key (creating it on first use) for the signer's anchors."""
        try:
            info = self._keystore.key_info(self._key_name)
        except KeystoreError as exc:
            if exc.code is not KeystoreErrorCode.KEY_NOT_FOUND:
                raise
            info = self._keystore.create_key(self._key_name, KeyType.ED25519)
        version = info.latest_version
        return PlatformKey(f"{self._key_name}-v{version}", self._keystore.public_key(self._key_name, version))

    def _key_version(self, key_id: str) -> int:
        prefix = f"{self._key_name}-v"
        assert key_id.startswith(prefix) and key_id[len(prefix) :].isdigit(), f"not our key id: {key_id}"
        return int(key_id[len(prefix) :])

    def anchors(self) -> dict[str, object]:
        """Return what the signer's anchors.json needs from the platform, with the exact network names.

        The platform key, each configured chain's cold wallet (Bitcoin: its
        descriptor; Ethereum: its address and chain id), and each asset's
        fee cap: the anchors' ``max_fee_minor`` must be at least that.
        """
        wallets: list[dict[str, object]] = []
        fee_caps: list[dict[str, object]] = []
        for name, chain in sorted(self._chains.names().items()):
            cold = self._wallets.one(name, Temperature.COLD)
            address = self._wallets.primary_address(cold.id).address
            wallets.append(chain.anchor_wallet(cold.id, cold.name, address))
            for asset in chain.adapter.assets():
                cap = str(chain.fee_cap_minor(asset))
                fee_caps.append({"asset": asset, "chain": name, "fee_cap_minor": cap})
        return {"platform_keys": [self.platform_key().to_json()], "wallets": wallets, "fee_caps": fee_caps}

    # -- export -----------------------------------------------------------------------------

    def export(self, kind: str, request_id: str) -> Exported:
        """Return the bundle for an approved cold request, building, reserving and recording it once.

        While the current bundle is unexpired, exporting again returns the
        same bytes (a lost stick). Once it expired unsigned, a new attempt
        replaces it, reusing its nonce so at most one can ever be mined.
        """
        source = self._source(kind)
        now_ms = self._clock()
        with self._sessions() as session:
            opened = source.open(session, request_id, now_ms, lock=False)
            current = self._newest(session, kind, request_id)
            pending = self._pending(session, opened.source_wallet_id, exclude=current)
            owner = opened.request.initiator_id
            if kind == "withdrawal" and freezes.is_frozen(session, owner):
                # A deposit of this owner left the chain after it was credited (docs/wallets.md).
                raise BundleError(BundleCode.REQUEST_NOT_READY,
                                  f"{owner}'s withdrawals are frozen pending review; not exported")
            _check_withdrawal_may_move(session, kind, opened, "exported")
        if opened.stage == EXPORTED and current is not None and current.state == EXPORTED:
            if current.expires_at_ms > now_ms:
                return Exported(_view(current), current.bundle)
        elif opened.stage != EXPORTABLE:
            raise BundleError(
                BundleCode.REQUEST_NOT_READY,
                f"{kind} {request_id} is {opened.state}: its bundle was already signed",
            )
        _check_quorum(kind, opened)
        replacing = None if current is None else Bundle.from_bytes(current.bundle)
        chain = self._chains.get(opened.chain)
        attempt = 1 if current is None else current.attempt + 1
        bundle = self._build(chain, opened, f"bnd-{request_id}-{attempt}", pending, replacing, now_ms)
        row = self._reserve(kind, source, opened, chain, bundle, attempt, now_ms)
        with self._sessions.begin() as session:
            again = source.open(session, request_id, now_ms, lock=True)
            newest = self._newest(session, kind, request_id)
            if again.state != opened.state or _id(newest) != _id(current):
                raise BundleError(
                    BundleCode.REQUEST_NOT_READY, f"{kind} {request_id} changed while exporting; export again"
                )
            _check_withdrawal_may_move(session, kind, again, "exported")
            if newest is not None:
                newest.state, newest.updated_ms = SUPERSEDED, now_ms
                newest.note = f"expired unsigned; replaced by {row.bundle_id}"
            session.add(row)
            source.move(session, request_id, EXPORTED, f"bundle {row.bundle_id} exported", now_ms)
            security_log.append(
                session,
                at_ms=now_ms,
                actor="system",
                action="bundle.export",
                subject=row.bundle_id,
                details={"request": f"{kind}/{request_id}", "sha256": row.digest, "attempt": attempt},
            )
            session.flush()
            return Exported(_view(row), row.bundle)

    def _build(
        self,
        chain: BundleChain,
        opened: Opened,
        bundle_id: str,
        pending: list[Bundle],
        replacing: Bundle | None,
        now_ms: int,
    ) -> Bundle:
        request = opened.request
        unsigned = chain.unsigned(request, pending, replacing)
        # The intent carries the fee cap the approvers bound, never one chosen now.
        if unsigned.fee_cap_minor != request.terms.fee_cap_minor:
            raise BundleError(
                BundleCode.REQUEST_MISMATCH,
                f"the {chain.chain} fee cap is now {unsigned.fee_cap_minor}, the approvers approved "
                f"{request.terms.fee_cap_minor}; the request needs new approvals",
            )
        body = build_bundle(
            bundle_id=bundle_id,
            chain=chain.chain,
            network=chain.network,
            request=RequestRef(request.kind, request.request_id, request.initiator_id),
            policy=request.policy,
            intent=Intent(
                request.source_wallet,
                request.asset,
                request.destination,
                request.amount_minor,
                request.terms.fee_cap_minor,
            ),
            transaction=unsigned.transaction,
            approvals=request.approvals,
            created_at_ms=now_ms,
            expires_at_ms=now_ms + self._ttl_ms,
        )
        key = self.platform_key()
        version = self._key_version(key.key_id)
        return platform_sign(
            body, key.key_id, lambda m: self._keystore.sign(self._key_name, m, version).value
        )

    def _reserve(
        self,
        kind: str,
        source: RequestSource,
        opened: Opened,
        chain: BundleChain,
        bundle: Bundle,
        attempt: int,
        now_ms: int,
    ) -> ColdBundle:
        """Reserve the amount on the cold wallet's account (once per request); return the new row."""
        request = opened.request
        cold = self._wallets.get_by_id(opened.source_wallet_id)
        debit = source.debit_account(opened)
        credit = self._wallets.wallet_account(cold, request.asset)
        reserve_id = f"{ledger_prefix(kind, request.request_id)}:reserve"
        # A retry (or a concurrent export) finds the same transfer: same id, same body, a no-op.
        result = self._ledger.submit(
            [
                TransferRequest(
                    id=reserve_id,
                    kind=TransferKind.PENDING,
                    debit_account=debit,
                    credit_account=credit,
                    amount=request.amount_minor,
                    reference=f"cold {kind} {request.request_id} to {request.destination}",
                )
            ]
        )[0]
        if result.code is LedgerCode.CREDITS_EXCEED_DEBITS:
            raise BundleError(
                BundleCode.COLD_BALANCE_SHORT,
                f"cold wallet {cold.name} holds too little {request.asset} in the ledger: {result.message}",
            )
        if result.code is not None:
            raise LedgerError(result.code, result.message)
        data = bundle.to_bytes()
        return ColdBundle(
            bundle_id=bundle.body.bundle_id,
            chain=chain.chain.value,
            request_kind=kind,
            request_id=request.request_id,
            attempt=attempt,
            state=EXPORTED,
            bundle=data,
            digest=hashlib.sha256(data).hexdigest(),
            expires_at_ms=bundle.body.expires_at_ms,
            source_wallet_id=cold.id,
            asset=request.asset,
            amount_minor=request.amount_minor,
            destination=request.destination,
            debit_account_id=debit,
            credit_account_id=credit,
            gas_account_id=self._wallets.wallet_account(cold, chain.adapter.native_asset),
            reserve_transfer_id=reserve_id,
            hold_transfer_id=opened.hold_transfer_id,
            raw_transaction=None,
            txid=None,
            broadcast_height=None,
            mined_height=None,
            fee_paid_minor=None,
            note="",
            created_ms=now_ms,
            updated_ms=now_ms,
        )

    # -- import -----------------------------------------------------------------------------

    def import_signed(self, data: bytes) -> BundleView:
        """Check a signed result against the bundle it answers; once complete, broadcast it.

        Importing the same file again is a no-op. Anything that does not
        answer exactly the exported bundle, or whose transaction differs from
        it in any field, is refused and nothing is stored or broadcast.
        """
        try:
            signed = SignedBundle.from_bytes(data)
        except SignerError as exc:
            raise BundleError(BundleCode.SIGNED_REFUSED, str(exc.refusal), int(exc.code)) from None
        digest = hashlib.sha256(data).hexdigest()
        now_ms = self._clock()
        with self._sessions() as session:
            row = session.get(ColdBundle, signed.bundle_id)
            if row is None:
                raise BundleError(
                    BundleCode.BUNDLE_NOT_FOUND, f"no bundle {signed.bundle_id[:128]} was exported"
                )
            earlier = list(
                session.scalars(
                    select(ColdBundleSignature).where(ColdBundleSignature.bundle_id == row.bundle_id)
                )
            )
            if any(s.digest == digest for s in earlier):
                return _view(row)
            _check_importable(row)
            bundle = Bundle.from_bytes(row.bundle)
            opened = self._source(row.request_kind).open(session, row.request_id, now_ms, lock=False)
            # An exported withdrawal is still in flight: a halt stops it before broadcast (the
            # signed file is not stored; import it again once the halt is lifted).
            _check_withdrawal_may_move(session, row.request_kind, opened, "imported")
        self._check_ours(row, bundle, opened)
        chain = self._chains.get(row.chain)
        try:
            finished = chain.finish(bundle, [*(SignedBundle.from_bytes(s.signed) for s in earlier), signed])
        except SignerError as exc:
            raise BundleError(
                BundleCode.SIGNED_REFUSED, f"signed result refused: {exc.refusal}", int(exc.code)
            ) from None
        self._record_signature(row.bundle_id, signed, data, digest, finished, now_ms)
        return self._advance(row.bundle_id) if finished is not None else self.get(row.bundle_id)

    def _check_ours(self, row: ColdBundle, bundle: Bundle, opened: Opened) -> None:
        """Check the stored bundle is the one we signed and still says what the request says."""
        key = Ed25519PublicKey.from_public_bytes(
            self._keystore.public_key(self._key_name, self._key_version(bundle.platform_key_id))
        )
        try:
            key.verify(bundle.platform_signature, signing_message(bundle.body))
        except InvalidSignature:
            raise BundleError(
                BundleCode.REQUEST_MISMATCH, f"stored bundle {row.bundle_id} is not signed by our bundle key"
            ) from None
        differences = opened.subject.differences(bundle.body.subject())
        if differences or hashlib.sha256(row.bundle).hexdigest() != row.digest:
            raise BundleError(
                BundleCode.REQUEST_MISMATCH,
                f"bundle {row.bundle_id} no longer matches {row.request_kind} {row.request_id}: "
                f"{'; '.join(differences) or 'digest differs'}",
            )

    def _record_signature(
        self,
        bundle_id: str,
        signed: SignedBundle,
        data: bytes,
        digest: str,
        finished: Finished | None,
        now_ms: int,
    ) -> None:
        with self._sessions.begin() as session:
            row = session.get(ColdBundle, bundle_id, with_for_update=True)
            assert row is not None
            _check_importable(row)
            session.add(
                ColdBundleSignature(
                    bundle_id=bundle_id,
                    signer_id=signed.signer_id,
                    signed=data,
                    digest=digest,
                    imported_ms=now_ms,
                )
            )
            details: dict[str, Any] = {"signer_id": signed.signer_id, "sha256": digest}
            if finished is not None:
                row.raw_transaction, row.txid = finished.raw.hex(), finished.txid
                row.state, row.updated_ms, row.note = SIGNED, now_ms, ""
                self._source(row.request_kind).move(
                    session, row.request_id, IN_FLIGHT, f"signed bundle {bundle_id} imported", now_ms
                )
                details["txid"] = finished.txid
            security_log.append(
                session,
                at_ms=now_ms,
                actor="system",
                action="bundle.import",
                subject=bundle_id,
                details=details,
            )

    # -- broadcast and settlement -----------------------------------------------------------

    def tick(self, limit: int = MAX_TICK_BUNDLES) -> list[BundleView]:
        """Broadcast signed bundles and settle those with enough confirmations; return their views."""
        with self._sessions() as session:
            ids = list(
                session.scalars(
                    select(ColdBundle.bundle_id)
                    .where(ColdBundle.state.in_(ON_CHAIN_STATES))
                    # Bundles of a chain this process has no node for wait for a process that has one.
                    .where(ColdBundle.chain.in_(list(self._chains.names())))
                    .order_by(ColdBundle.created_ms, ColdBundle.bundle_id)
                    .limit(limit)
                )
            )
        return [self._advance(bundle_id) for bundle_id in ids]

    def _advance(self, bundle_id: str) -> BundleView:
        row = self._load(bundle_id)
        if row.state not in ON_CHAIN_STATES:
            return _view(row)
        chain = self._chains.get(row.chain)
        assert row.raw_transaction is not None and row.txid is not None
        try:
            receipt = chain.adapter.receipt(row.txid)
            if receipt is None:
                self._send(row, chain)
            else:
                self._track(row, chain, receipt)
        except ChainError as exc:
            # The record is safe; the next tick tries again.
            log.warning("cold bundle %s not advanced: %s", bundle_id, exc.message)
            self._set(bundle_id, note=f"waiting for the node: {exc.message}"[:NOTE_MAX_LEN])
        return self.get(bundle_id)

    def _send(self, row: ColdBundle, chain: BundleChain) -> None:
        """(Re-)broadcast: first time, after a reorg dropped it, or after a node forgot it."""
        assert row.raw_transaction is not None
        if row.mined_height is not None:
            log.warning("cold bundle %s left the best chain (reorg); re-broadcasting", row.bundle_id)
        try:
            chain.adapter.broadcast(bytes.fromhex(row.raw_transaction))
        except ChainError as exc:
            note = f"broadcast refused, will retry: {exc.message}"
            self._set(row.bundle_id, note=note[:NOTE_MAX_LEN], mined_height=None)
            return
        height = chain.adapter.head_height()
        self._set(row.bundle_id, state=BROADCAST, broadcast_height=height, mined_height=None, note="")

    def _track(self, row: ColdBundle, chain: BundleChain, receipt: Receipt) -> None:
        if (row.mined_height, row.fee_paid_minor) != (receipt.block_height, receipt.fee_paid_minor):
            self._set(
                row.bundle_id,
                state=BROADCAST,
                mined_height=receipt.block_height,
                fee_paid_minor=receipt.fee_paid_minor,
            )
        confirmations = chain.adapter.head_height() - receipt.block_height + 1
        if confirmations >= chain.confirmations(row.asset):
            self._settle(self._load(row.bundle_id), chain, receipt)

    def _settle(self, row: ColdBundle, chain: BundleChain, receipt: Receipt) -> None:
        requests = settlement_requests(
            prefix=ledger_prefix(row.request_kind, row.request_id), receipt=receipt,
            hold_transfer_id=row.hold_transfer_id, reserve_transfer_id=row.reserve_transfer_id,
            network_fees_account=self._wallets.network_fees_account(chain.adapter.native_asset),
            gas_account=row.gas_account_id)
        refused = refusal(self._ledger.submit(requests, linked=True))
        if refused is not None:
            message = f"ledger refused settlement of {row.bundle_id}: {refused}"
            log.error(message)
            self._set(row.bundle_id, note=message[:NOTE_MAX_LEN])
            return
        self._close(row.bundle_id, receipt)

    def _close(self, bundle_id: str, receipt: Receipt) -> None:
        now_ms = self._clock()
        outcome = "completed" if receipt.success else "failed"
        with self._sessions.begin() as session:
            row = session.get(ColdBundle, bundle_id, with_for_update=True)
            assert row is not None
            if row.state not in ON_CHAIN_STATES:
                return  # settled by a concurrent tick; the ledger ids made its entries a no-op here
            row.state, row.updated_ms = (CONFIRMED if receipt.success else FAILED), now_ms
            row.note = "" if receipt.success else f"reverted on chain in {receipt.txid}; hold voided"
            reason = f"transaction {receipt.txid} {'confirmed' if receipt.success else 'reverted'}"
            self._source(row.request_kind).move(session, row.request_id, outcome, reason, now_ms)
            security_log.append(
                session,
                at_ms=now_ms,
                actor="system",
                action=f"bundle.{row.state}",
                subject=bundle_id,
                details={"txid": receipt.txid},
            )
        log.info("cold bundle %s: %s", bundle_id, outcome)

    # -- reads ------------------------------------------------------------------------------

    def get(self, bundle_id: str) -> BundleView:
        """Return one bundle or refuse with bundle_not_found."""
        return _view(self._load(bundle_id))

    def bundle_bytes(self, bundle_id: str) -> bytes:
        """Return the exact bytes exported for ``bundle_id``."""
        return self._load(bundle_id).bundle

    def recent(self, *, state: str | None = None, limit: int = 100) -> list[BundleView]:
        """Return bundles, newest first."""
        assert 1 <= limit <= MAX_LIST, f"limit was {limit}"
        query = select(ColdBundle).order_by(ColdBundle.created_ms.desc(), ColdBundle.bundle_id).limit(limit)
        if state is not None:
            query = query.where(ColdBundle.state == state)
        with self._sessions() as session:
            return [_view(row) for row in session.scalars(query)]

    # -- helpers ----------------------------------------------------------------------------

    def _source(self, kind: str) -> RequestSource:
        source = self._sources.get(kind)
        if source is None:
            raise BundleError(
                BundleCode.REQUEST_NOT_FOUND, f"request kind was {kind[:20]!r}, must be withdrawal or refill"
            )
        return source

    @staticmethod
    def _newest(session: Session, kind: str, request_id: str) -> ColdBundle | None:
        return session.scalar(
            select(ColdBundle)
            .where(ColdBundle.request_kind == kind, ColdBundle.request_id == request_id)
            .order_by(ColdBundle.attempt.desc())
            .limit(1)
        )

    @staticmethod
    def _pending(session: Session, wallet_id: int, exclude: ColdBundle | None) -> list[Bundle]:
        rows = session.scalars(
            select(ColdBundle).where(
                ColdBundle.source_wallet_id == wallet_id, ColdBundle.state.in_(PENDING_STATES)
            )
        )
        return [
            Bundle.from_bytes(r.bundle) for r in rows if exclude is None or r.bundle_id != exclude.bundle_id
        ]

    def _load(self, bundle_id: str) -> ColdBundle:
        with self._sessions() as session:
            row = session.get(ColdBundle, bundle_id)
            if row is None:
                raise BundleError(BundleCode.BUNDLE_NOT_FOUND, f"bundle {bundle_id[:128]} does not exist")
            return row

    def _set(self, bundle_id: str, **fields: Any) -> None:
        with self._sessions.begin() as session:
            row = session.get(ColdBundle, bundle_id, with_for_update=True)
            assert row is not None
            for name, value in fields.items():
                setattr(row, name, value)
            row.updated_ms = self._clock()


def _id(row: ColdBundle | None) -> str | None:
    return None if row is None else row.bundle_id


def _check_quorum(kind: str, opened: Opened) -> None:
    quorum = opened.quorum
    if quorum is None or quorum.met:
        return
    reasons = "; ".join(f"{r.approval.approver_id}: {r.refusal.message}" for r in quorum.rejected)
    if opened.outdated_approvals:
        outdated = f"{opened.outdated_approvals} stored approval(s) skipped: {APPROVAL_OUTDATED_MESSAGE}"
        reasons = f"{reasons}; {outdated}" if reasons else outdated
    raise BundleError(
        BundleCode.QUORUM_NOT_MET,
        f"{kind} {opened.request.request_id} has {len(quorum.valid)} of {quorum.requirement.count} approvals "
        f"that still count{' (' + reasons + ')' if reasons else ''}; the offline signer would refuse it",
    )


def _check_importable(row: ColdBundle) -> None:
    if row.state == SUPERSEDED:
        raise BundleError(
            BundleCode.BUNDLE_SUPERSEDED,
            f"bundle {row.bundle_id} expired and was replaced ({row.note}); sign the new bundle instead",
        )
    if row.state != EXPORTED:
        raise BundleError(
            BundleCode.SIGNED_CONFLICT,
            f"bundle {row.bundle_id} is already {row.state} with another signed result",
        )


def _check_withdrawal_may_move(session: Session, kind: str, opened: Opened, step: str) -> None:
    """Refuse to export or import a cold withdrawal whose hold is gone or whose chain is halted."""
    if kind != "withdrawal":
        return
    request = opened.request
    halt = withdrawal_halts.halted(session, request.asset)
    if halt is not None:
        raise BundleError(BundleCode.WITHDRAWALS_HALTED,
                          f"withdrawals of {request.asset} are halted ({halt.scope}); "
                          f"withdrawal {request.request_id} not {step}")
    # The hold is what keeps the user from spending the same funds twice: without a live one
    # (voided by an operator, expired, posted), a signed transfer would pay out unbacked.
    if opened.hold_transfer_id is None or not withdrawals.hold_is_live(session, opened.hold_transfer_id):
        raise BundleError(BundleCode.HOLD_NOT_LIVE,
                          f"withdrawal {request.request_id}'s hold {opened.hold_transfer_id} is not live; "
                          f"not {step}")

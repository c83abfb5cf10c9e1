"""Verify a bundle before signing: pure, deterministic, every refusal with its reason.

The checks, in order: the platform's signature; expiry; the wallet, asset,
network and policy rule against the signer's own trust anchors and limits
(the rule must be configured here and require at least the wallet's own
floor of approvals: the bundle cannot choose an easier rule); the approvals
quorum (policies' `verify_quorum`, over the subject derived from this
bundle: request, chain, network, wallet, asset, amount, destination, fee
cap, policy and rule; every approval carried must count); the signing
history (no bundle id or request signed twice); and the transaction
against the intent. All checks run, so `inspect` can show every problem.
A fee above the asset's warning threshold is not refused but is a warning
the operator must accept.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.quorum import verify_quorum
from policies.signature_scheme import verify_ed25519
from signer.anchors import AssetLimits, BitcoinWallet, EthereumWallet, TrustAnchors, Wallet
from signer.bitcoin import check_bitcoin
from signer.bundle import BitcoinTransaction, Bundle, signing_message
from signer.checks import TxCheck
from signer.ethereum import check_ethereum
from signer.results import SignerCode, SignerRefusal
from signer.signing_log import History

# A bundle about to expire may not make it back to the platform in time.
EXPIRY_WARNING_MS = 15 * 60_000


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome: no refusals means the bundle may be signed."""

    bundle: Bundle
    refusals: tuple[SignerRefusal, ...]
    facts: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    check: TxCheck | None = None  # The transaction check (fee, change, details), when it ran.
    asset: AssetLimits | None = None
    approvers: tuple[tuple[str, str, int], ...] = ()  # (approver, key id, signed at ms) that counted.

    @property
    def ok(self) -> bool:
        return not self.refusals

    @property
    def codes(self) -> frozenset[SignerCode]:
        return frozenset(refusal.code for refusal in self.refusals)


def verify_bundle(bundle: Bundle, anchors: TrustAnchors, now_ms: int, history: History) -> Verification:
    """Run every check; return refusals and the plain-words facts about the transaction."""
    check = TxCheck()
    _check_platform_signature(bundle, anchors, check)
    body = bundle.body
    if now_ms >= body.expires_at_ms:
        check.refuse(
            SignerCode.BUNDLE_EXPIRED, f"bundle expired at {body.expires_at_ms} ms, now is {now_ms} ms"
        )
    elif body.expires_at_ms - now_ms < EXPIRY_WARNING_MS:
        check.warn(
            f"EXPIRES SOON: the bundle expires in {(body.expires_at_ms - now_ms) // 60_000} min; the "
            "platform refuses a signed result for an expired bundle."
        )
    wallet, asset = _check_anchors(bundle, anchors, check)
    approvers = _check_approvals(bundle, anchors, now_ms, check)
    _check_history(bundle, history, check)
    tx_check = None
    if wallet is not None and asset is not None:
        tx_check = _check_transaction(bundle, wallet, asset)
        check.refusals.extend(tx_check.refusals)
        check.facts.extend(tx_check.facts)
        check.warnings.extend(tx_check.warnings)
        _check_fee_warning(bundle, asset, tx_check, check)
    return Verification(
        bundle,
        tuple(check.refusals),
        tuple(check.facts),
        tuple(check.warnings),
        tx_check,
        asset,
        approvers,
    )


def _check_fee_warning(bundle: Bundle, asset: AssetLimits, tx_check: TxCheck, check: TxCheck) -> None:
    fee = tx_check.fee_minor
    if fee is not None and fee > asset.warn_fee_minor:
        check.warn(
            f"HIGH FEE: this transaction can pay {fee} in fees (native minor units), above this signer's "
            f"warning threshold of {asset.warn_fee_minor} for {asset.asset} (ceiling {asset.max_fee_minor}). "
            "Confirm the fee is intended before signing."
        )


def _check_platform_signature(bundle: Bundle, anchors: TrustAnchors, check: TxCheck) -> None:
    public_key = anchors.platform_keys.get(bundle.platform_key_id)
    if public_key is None:
        check.refuse(
            SignerCode.PLATFORM_KEY_UNKNOWN, f"platform key {bundle.platform_key_id} is not trusted here"
        )
    elif not verify_ed25519(public_key, signing_message(bundle.body), bundle.platform_signature):
        check.refuse(
            SignerCode.PLATFORM_SIGNATURE_INVALID,
            f"platform signature by {bundle.platform_key_id} does not verify: the bundle was altered",
        )


def _check_anchors(
    bundle: Bundle, anchors: TrustAnchors, check: TxCheck
) -> tuple[Wallet | None, AssetLimits | None]:
    body, intent = bundle.body, bundle.body.intent
    wallet = anchors.wallets.get(intent.source_wallet)
    if wallet is None:
        check.refuse(SignerCode.WALLET_UNKNOWN, f"source wallet {intent.source_wallet} is not one of ours")
    elif wallet.chain is not body.chain or wallet.network != body.network:
        check.refuse(
            SignerCode.NETWORK_MISMATCH,
            f"bundle is for {body.chain}/{body.network}, wallet {wallet.name} "
            f"is {wallet.chain}/{wallet.network}",
        )
        wallet = None
    asset = anchors.assets.get(intent.asset)
    if asset is None or asset.chain is not body.chain:
        check.refuse(SignerCode.ASSET_UNKNOWN, f"asset {intent.asset} is not configured for {body.chain}")
        asset = None
    else:
        _check_limits(bundle, asset, check)
    requirement = anchors.quorums.get((body.policy.policy_id, body.policy.rule))
    if requirement is None:
        check.refuse(
            SignerCode.POLICY_RULE_UNKNOWN,
            f"policy {body.policy.policy_id} rule {body.policy.rule} has no quorum configured on this signer",
        )
    elif wallet is not None and requirement.count < wallet.min_approvals:
        check.refuse(
            SignerCode.POLICY_RULE_BELOW_FLOOR,
            f"the bundle claims rule {body.policy.rule} ({requirement.count} of {requirement.group}), but "
            f"this signer requires at least {wallet.min_approvals} approvals for wallet {wallet.name}",
        )
    return wallet, asset


def _check_limits(bundle: Bundle, asset: AssetLimits, check: TxCheck) -> None:
    intent = bundle.body.intent
    if intent.amount_minor > asset.max_amount_minor:
        check.refuse(
            SignerCode.LIMIT_EXCEEDED,
            f"amount {intent.amount_minor} exceeds this signer's limit of "
            f"{asset.max_amount_minor} for {asset.asset}",
        )
    if intent.fee_cap_minor > asset.max_fee_minor:
        check.refuse(
            SignerCode.LIMIT_EXCEEDED,
            f"fee cap {intent.fee_cap_minor} exceeds this signer's limit of "
            f"{asset.max_fee_minor} for {asset.asset}",
        )


def _check_approvals(
    bundle: Bundle, anchors: TrustAnchors, now_ms: int, check: TxCheck
) -> tuple[tuple[str, str, int], ...]:
    body = bundle.body
    requirement = anchors.quorums.get((body.policy.policy_id, body.policy.rule))
    if requirement is None:
        return ()
    for index, approval in enumerate(body.approvals):
        if not approval.subject.binds_transfer_terms:
            check.refuse(
                SignerCode.APPROVAL_OUTDATED,
                f"approval #{index} by {approval.approver_id} does not name the chain, network, source "
                "wallet and rule; it was made by an outdated client and does not count: approve again",
            )
    result = verify_quorum(
        body.subject(),
        body.approvals,
        anchors.registry,
        requirement,
        body.request.initiator_id,
        now_ms,
        max_age_ms=anchors.max_approval_age_ms,
    )
    # The platform includes only approvals that counted; one that does not
    # count here means the bundle was altered or the two sides disagree.
    for rejected in result.rejected:
        check.refusals.append(
            SignerRefusal(
                SignerCode.APPROVAL_REJECTED,
                f"approval #{rejected.index} by {rejected.approval.approver_id}: {rejected.refusal.message}",
                rejected.refusal.code,
            )
        )
    refusal = result.refusal
    if refusal is not None:
        check.refusals.append(SignerRefusal(SignerCode.APPROVALS_INSUFFICIENT, refusal.message, refusal.code))
    else:
        check.fact(
            f"approvals: {', '.join(sorted(result.approver_ids))} ({requirement.count} of group "
            f"{requirement.group} required)"
        )
    return tuple((a.approver_id, a.key_id, a.signed_at_ms) for a in result.valid)


def _check_history(bundle: Bundle, history: History, check: TxCheck) -> None:
    body = bundle.body
    earlier = history.by_bundle.get(body.bundle_id)
    if earlier is not None and earlier.bundle_sha256 == bundle.digest:
        check.refuse(
            SignerCode.ALREADY_SIGNED,
            f"bundle {body.bundle_id} was already signed (log entry {earlier.seq}); "
            f"signed output sha256 {earlier.output_sha256}",
        )
    elif earlier is not None:
        check.refuse(
            SignerCode.BUNDLE_ID_REUSED,
            f"DIFFERENT CONTENT under an already signed bundle id {body.bundle_id}: signed "
            f"{earlier.bundle_sha256}, this is {bundle.digest}. Refusing; report this to security.",
        )
    by_request = history.by_request.get(body.request.key)
    if by_request is not None and by_request.bundle_id != body.bundle_id:
        check.refuse(
            SignerCode.REQUEST_ALREADY_SIGNED,
            f"{body.request.key} was already signed in bundle {by_request.bundle_id} "
            f"(log entry {by_request.seq})",
        )


def _check_transaction(bundle: Bundle, wallet: Wallet, asset: AssetLimits) -> TxCheck:
    tx = bundle.body.transaction
    intent = bundle.body.intent
    if isinstance(tx, BitcoinTransaction):
        assert isinstance(wallet, BitcoinWallet)
        return check_bitcoin(intent, tx, wallet)
    assert isinstance(wallet, EthereumWallet)
    return check_ethereum(intent, tx, wallet, asset)

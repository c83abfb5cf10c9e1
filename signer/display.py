"""What the operator reads before signing: the intent in whole units, fees, change, timing, approvers.

Pure functions of a `Verification` and the clock. Amounts are integers in
minor units everywhere else; here they become text ("1.25 ETH",
"2,500 USDC", "0.0012 BTC") by integer arithmetic only, with the minor
amount next to them. `report_json` is the same content for machines.
"""

from __future__ import annotations

from datetime import UTC, datetime

from signer.bitcoin import BitcoinSummary
from signer.bundle import BitcoinTransaction, Bundle, Chain, EthereumTransaction
from signer.verification import Verification

NATIVE = {Chain.BITCOIN: ("BTC", 8, "sat"), Chain.ETHEREUM: ("ETH", 18, "wei")}
GWEI = 10**9
MS_PER_MINUTE = 60_000
BIP125_MAX_SEQUENCE = 0xFFFFFFFD


def whole_units(amount_minor: int, decimals: int, symbol: str) -> str:
    """Return e.g. "2,500 USDC" or "0.0012 BTC": thousands separators, no trailing zeros, no float."""
    assert amount_minor >= 0 and decimals >= 0, (amount_minor, decimals)
    whole, fraction = divmod(amount_minor, 10**decimals)
    text = f"{whole:,}"
    if fraction:
        text += "." + f"{fraction:0{decimals}d}".rstrip("0")
    return f"{text} {symbol}"


def gwei(wei: int) -> str:
    return whole_units(wei, 9, "gwei")


def iso_ms(ms: int) -> str:
    """Return a unix millisecond time as ISO 8601 UTC, to the second."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def time_left(until_ms: int, now_ms: int) -> str:
    if until_ms <= now_ms:
        return "EXPIRED"
    minutes = (until_ms - now_ms) // MS_PER_MINUTE
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min left" if hours else f"{minutes} min left"


def _asset_units(verification: Verification) -> tuple[int, str]:
    """Return (decimals, symbol) of the bundle's asset; unknown assets are shown in minor units."""
    if verification.asset is not None:
        return verification.asset.decimals, verification.asset.asset
    body = verification.bundle.body
    symbol, decimals, _ = NATIVE[body.chain]
    if body.intent.asset == symbol:
        return decimals, symbol
    return 0, f"{body.intent.asset} minor units"


def _native(bundle: Bundle, amount_minor: int) -> str:
    symbol, decimals, unit = NATIVE[bundle.body.chain]
    return f"{whole_units(amount_minor, decimals, symbol)} ({amount_minor:,} {unit})"


def describe(verification: Verification, now_ms: int) -> list[str]:
    """Return the bundle in plain words, for `inspect` and before the confirmation prompt."""
    bundle = verification.bundle
    body, intent, request = bundle.body, bundle.body.intent, bundle.body.request
    decimals, symbol = _asset_units(verification)
    amount = whole_units(intent.amount_minor, decimals, symbol)
    lines = [
        f"bundle {body.bundle_id} (sha256 {bundle.digest})",
        f"{request.kind.name.lower()} {request.request_id}, initiated by {request.initiator_id}",
        f"SEND      {amount} ({intent.amount_minor:,} minor units)",
        f"TO        {intent.destination}",
        f"FROM      wallet {intent.source_wallet} on {body.chain}/{body.network}",
        f"FEE CAP   {_native(bundle, intent.fee_cap_minor)} (approved)",
    ]
    lines += _transaction_lines(verification)
    lines += [
        f"POLICY    {body.policy.policy_id} v{body.policy.policy_version}, rule {body.policy.rule}",
        f"EXPIRES   {iso_ms(body.expires_at_ms)} ({time_left(body.expires_at_ms, now_ms)})",
    ]
    for approver, key_id, signed_at_ms in verification.approvers:
        lines.append(f"APPROVED  by {approver} (key {key_id}) at {iso_ms(signed_at_ms)}")
    if not verification.approvers:
        lines.append(f"APPROVED  {len(body.approvals)} approvals carried, none counted")
    return lines


def _transaction_lines(verification: Verification) -> list[str]:
    bundle = verification.bundle
    tx = bundle.body.transaction
    check = verification.check
    if isinstance(tx, EthereumTransaction):
        return [
            f"FEE       at most {_native(bundle, tx.max_fee_wei)}: gas limit {tx.gas_limit:,} x max fee "
            f"{gwei(tx.max_fee_per_gas_wei)} (tip {gwei(tx.max_priority_fee_per_gas_wei)})",
            f"NONCE     {tx.nonce}, chain id {tx.chain_id}",
        ]
    assert isinstance(tx, BitcoinTransaction)
    summary = check.bitcoin if check is not None else None
    if not isinstance(summary, BitcoinSummary):
        return ["FEE       unknown: the input amounts are not proven (see the refusals)"]
    if summary.fee_sat < 0:
        return [f"FEE       none: the outputs exceed the proven inputs by {-summary.fee_sat:,} sat"]
    rate = summary.fee_rate_sat_vb_x100
    lines = [
        f"FEE       {_native(bundle, summary.fee_sat)}, {rate // 100}.{rate % 100:02d} sat/vB "
        f"(about {summary.vsize} vB; from the proven input amounts)"
    ]
    for amount, branch, index in summary.change:
        lines.append(
            f"CHANGE    {_native(bundle, amount)} back to {bundle.body.intent.source_wallet}, "
            f"branch {branch} (change), index {index}"
        )
    if not summary.change:
        lines.append("CHANGE    none")
    rbf = all(sequence <= BIP125_MAX_SEQUENCE for sequence in summary.sequences)
    sequences = ", ".join(sorted({f"{s:#010x}" for s in summary.sequences}))
    lines.append(
        f"LOCKTIME  nLockTime {summary.locktime} (no time lock); nSequence {sequences}: "
        f"{'replaceable (RBF)' if rbf else 'final (not replaceable)'}; stated intent: {tx.sequence}"
    )
    return lines


def report_json(verification: Verification, now_ms: int) -> dict[str, object]:
    """Return everything `inspect` shows, for machines (amounts as decimal strings)."""
    bundle = verification.bundle
    body = bundle.body
    check = verification.check
    transaction: dict[str, object] = dict(body.transaction.to_json())
    transaction.pop("psbt", None)
    summary = check.bitcoin if check is not None else None
    if isinstance(summary, BitcoinSummary):
        transaction.update(
            fee_sat=str(summary.fee_sat),
            vsize=summary.vsize,
            fee_rate_sat_vb_x100=summary.fee_rate_sat_vb_x100,
            change=[{"amount_sat": str(a), "branch": b, "index": i} for a, b, i in summary.change],
            locktime_value=summary.locktime,
            sequences=list(summary.sequences),
        )
    if isinstance(body.transaction, EthereumTransaction):
        transaction["max_fee_wei"] = str(body.transaction.max_fee_wei)
    return {
        "bundle_id": body.bundle_id,
        "sha256": bundle.digest,
        "ok": verification.ok,
        "chain": body.chain.value,
        "network": body.network,
        "request": body.request.to_json(),
        "policy": body.policy.to_json(),
        "intent": body.intent.to_json(),
        "transaction": transaction,
        "expires_at": iso_ms(body.expires_at_ms),
        "expires_in_ms": max(0, body.expires_at_ms - now_ms),
        "approvals": [
            {"approver_id": a, "key_id": k, "signed_at": iso_ms(t)} for a, k, t in verification.approvers
        ],
        "facts": list(verification.facts),
        "warnings": list(verification.warnings),
        "refusals": [refusal.to_json() for refusal in verification.refusals],
    }

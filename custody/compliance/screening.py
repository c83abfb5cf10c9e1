"""Sanctions screening: load list versions, screen destinations, whitelists and names, re-screen on change.

A list is loaded from OFAC's CSV set in a directory (`custody.compliance.sdn`);
each load that changes the content becomes a new version with its diff
against the previous one, and then everything already on file is screened
again (active whitelist entries, withdrawals not yet on chain, user names).
Loading the same content again changes nothing.

A hit on an address (destination or whitelist entry, compared in canonical
form per chain, `custody.compliance.addresses`) raises a sanctions alert of
score 100 in the user's sanctions case and, per `ScreeningPolicy`, freezes
the user (`custody.freezes`: withdrawals refused, approved ones not
dispatched, lifting needs two admins). A withdrawal to a listed address is
blocked in the transaction that creates it. A fuzzy name match (rapidfuzz
``token_sort_ratio`` over the primary and alternate names) raises an alert
scored by the match for a person to judge; it does not freeze.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rapidfuzz import fuzz, process, utils
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from custody import freezes, security_log
from custody.access.models import User
from custody.compliance.addresses import normalise_for_asset
from custody.compliance.cases import AlertInput, raise_alert
from custody.compliance.codes import ComplianceCode, ComplianceError
from custody.compliance.models import ComplianceDeposit, SanctionedAddress, SanctionsListVersion
from custody.compliance.sdn import ListedAddress, SanctionsList, SdnEntry, SdnFormatError, diff, parse_sdn
from custody.withdrawals.models import WhitelistAddress, WithdrawalRequest

SANCTIONS = "sanctions"
ADDRESS_RULE, NAME_RULE = "sanctions.address", "sanctions.name"
SCREEN_ACTOR = "service:sanctions-screening"
BLOCK_REASON = "refused by compliance screening"
# Deposits already decided as quarantined were screened (and cased) when they arrived.
QUARANTINED_DEPOSIT = "quarantined"
# Withdrawals that may still reach the chain: a hit freezes their owner, which stops dispatch.
UNSENT_STATES = ("pending_approval", "delayed", "approved", "awaiting_signature")
SDN_FILES = {"sdn": "sdn.csv", "alt": "alt.csv", "add": "add.csv", "comments": "sdn_comments.csv"}
MAX_NAME_CHARS = 256
MAX_NAME_HITS = 10
RESCREEN_BATCH = 500


@dataclass(frozen=True, slots=True)
class ScreeningPolicy:
    """What a hit does: address hits freeze the user unless turned off; names alert above a threshold."""

    freeze_on_address_hit: bool = True
    name_threshold: int = 90  # rapidfuzz token_sort_ratio, 0..100.

    def __post_init__(self) -> None:
        assert 50 <= self.name_threshold <= 100, f"name_threshold was {self.name_threshold}, must be 50..100"


@dataclass(frozen=True, slots=True)
class NameHit:
    ent_num: int
    listed_name: str
    matched_name: str
    score: int

    def to_json(self) -> dict[str, Any]:
        return {"ent_num": self.ent_num, "listed_name": self.listed_name, "matched_name": self.matched_name,
                "score": self.score}


@dataclass(frozen=True, slots=True)
class LoadResult:
    version: int
    created: bool
    diff: dict[str, Any]
    new_alerts: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "created": self.created, "diff": self.diff,
                "new_alerts": list(self.new_alerts)}


def alert_id(subject_kind: str, subject: str, ent_num: int) -> str:
    """Return the id of the alert for ``subject`` matching entry ``ent_num`` (the same on every re-screen)."""
    digest = hashlib.sha256(f"{subject_kind}\n{subject}\n{ent_num}".encode()).hexdigest()
    return f"snc_{digest[:32]}"


def read_sdn_directory(directory: Path) -> SanctionsList:
    """Read and parse the SDN CSV set in ``directory`` (sdn.csv required, the others optional)."""
    texts: dict[str, str] = {}
    for key, name in SDN_FILES.items():
        path = directory / name
        if path.is_file():
            texts[key] = path.read_text(encoding="utf-8", errors="strict")
    if "sdn" not in texts:
        raise ComplianceError(ComplianceCode.SANCTIONS_LIST_INVALID, f"{directory} has no sdn.csv")
    try:
        return parse_sdn(texts["sdn"], texts.get("alt", ""), texts.get("add", ""), texts.get("comments", ""))
    except SdnFormatError as exc:
        raise ComplianceError(ComplianceCode.SANCTIONS_LIST_INVALID, str(exc)) from None


class Screening:
    """Sanctions lists and screening against the current version."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], int],
                 policy: ScreeningPolicy | None = None) -> None:
        self._sessions = sessions
        self._clock = clock
        self.policy = policy or ScreeningPolicy()
        self._names: tuple[int, list[tuple[int, str, str]]] | None = None  # (version, [(ent, primary, name)])

    # -- lists ---------------------------------------------------------------------------------

    def load_directory(self, directory: Path, *, actor: str) -> LoadResult:
        """Load the list in ``directory`` as a new version (if it changed) and re-screen everything."""
        return self.load(read_sdn_directory(directory), source=str(directory)[:256], actor=actor)

    def load(self, parsed: SanctionsList, *, source: str, actor: str) -> LoadResult:
        """Store ``parsed`` as the next version unless it equals the current one; then re-screen."""
        now_ms = self._clock()
        digest = parsed.digest
        with self._sessions.begin() as session:
            current = _current(session, lock=True)
            if current is not None and current.digest == digest:
                return LoadResult(current.version, False, json.loads(current.diff), ())
            previous = _entries_of(current)
            change = diff(previous, parsed).to_json()
            version = 1 if current is None else current.version + 1
            session.add(SanctionsListVersion(
                version=version, source=source, digest=digest, entry_count=len(parsed.entries),
                address_count=len(parsed.address_keys()), loaded_by=actor[:64], loaded_ms=now_ms,
                entries=json.dumps([parsed.entries[k].to_json() for k in sorted(parsed.entries)]),
                diff=json.dumps(change, sort_keys=True)))
            session.flush()
            session.add_all(SanctionedAddress(version=version, family=a.family, normalised=a.normalised,
                                              currency=a.currency, ent_num=e.ent_num)
                            for e in parsed.entries.values() for a in e.addresses)
            security_log.append(session, at_ms=now_ms, actor=actor[:64], action="compliance.sanctions.load",
                                subject=str(version), details={"digest": digest, "source": source,
                                                               **{k: len(v) for k, v in change.items()}})
        return LoadResult(version, True, change, tuple(self.rescreen_all()))

    def versions(self, limit: int = 50) -> list[dict[str, Any]]:
        """Return the loaded versions, newest first, with their diffs."""
        with self._sessions() as session:
            rows = session.scalars(select(SanctionsListVersion).order_by(SanctionsListVersion.version.desc())
                                   .limit(limit))
            return [{"version": r.version, "source": r.source, "digest": r.digest,
                     "entry_count": r.entry_count,
                     "address_count": r.address_count, "loaded_by": r.loaded_by, "loaded_ms": r.loaded_ms,
                     "diff": json.loads(r.diff)} for r in rows]

    # -- screening -----------------------------------------------------------------------------

    def address_hits(self, session: Session, asset: str, address: str) -> list[SanctionedAddress]:
        """Return the current list's entries for ``address`` as a destination of ``asset``."""
        version = session.scalar(select(func.max(SanctionsListVersion.version)))
        if version is None:
            return []
        family, canonical = normalise_for_asset(asset, address)
        return list(session.scalars(select(SanctionedAddress).where(
            SanctionedAddress.version == version, SanctionedAddress.family == family,
            SanctionedAddress.normalised == canonical).order_by(SanctionedAddress.ent_num)))

    def screen_destination(self, session: Session, username: str, asset: str, address: str,
                           subject: str) -> str | None:
        """Screen a destination in the caller's transaction; on a hit alert, freeze and return why."""
        return BLOCK_REASON if self._screen_destination(session, username, asset, address, subject) else None

    def screen_deposit_source(self, session: Session, username: str, asset: str, sender: str,
                              subject: str) -> str | None:
        """Screen a deposit's sender in the caller's transaction; on a hit alert, freeze, return the alert."""
        raised = self._screen_destination(session, username, asset, sender, subject)
        return raised[0][0] if raised else None

    def _screen_destination(self, session: Session, username: str, asset: str, address: str,
                            subject: str) -> list[tuple[str, bool]]:
        """Alert (and freeze) on each hit of ``address``; return ``(alert id, newly raised)`` per hit."""
        hits = self.address_hits(session, asset, address)
        if not hits:
            return []
        now_ms = self._clock()
        subject_kind = subject.split(":", 1)[0]
        raised = []
        for hit in hits:
            row, new = raise_alert(session, AlertInput(
                alert_id=alert_id(subject_kind, subject, hit.ent_num), kind=SANCTIONS, rule_id=ADDRESS_RULE,
                username=username, subject_kind=subject_kind, subject=subject, score=100,
                evidence={"asset": asset, "address": address, "normalised": hit.normalised,
                          "family": hit.family, "listed_currency": hit.currency, "ent_num": hit.ent_num,
                          "list_version": hit.version}), now_ms=now_ms, actor=SCREEN_ACTOR)
            raised.append((row.id, new))
        if self.policy.freeze_on_address_hit:
            key = hashlib.sha256(f"{hits[0].family}:{hits[0].normalised}".encode()).hexdigest()[:24]
            freezes.freeze(session, freeze_id=f"sanctions:{username}:{key}", owner=username,
                           reason=f"sanctions hit on {subject}", raised_by=SCREEN_ACTOR, now_ms=now_ms)
        return raised

    def screen_name(self, name: str) -> list[NameHit]:
        """Return list entries whose primary or alternate name fuzzily matches ``name``, best first."""
        with self._sessions() as session:
            return self._screen_name_in(session, name)

    def _screen_name_in(self, session: Session, name: str) -> list[NameHit]:
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
            raise ComplianceError(ComplianceCode.SCREEN_INPUT_INVALID,
                                  f"name must be 1..{MAX_NAME_CHARS} characters and not blank")
        names = self._name_index(session)
        found = process.extract(name, [n for _, _, n in names], scorer=fuzz.token_sort_ratio,
                                processor=utils.default_process, score_cutoff=self.policy.name_threshold,
                                limit=MAX_NAME_HITS * 4)
        best: dict[int, NameHit] = {}
        for matched, score, index in found:
            ent_num, primary, _ = names[index]
            if ent_num not in best or best[ent_num].score < round(score):
                best[ent_num] = NameHit(ent_num, primary, matched, round(score))
        return sorted(best.values(), key=lambda h: (-h.score, h.ent_num))[:MAX_NAME_HITS]

    def rescreen_all(self) -> list[str]:
        """Screen every active whitelist entry, unsent withdrawal, past deposit sender and user name.

        Return the new alert ids. A deposit already received from a sender the new list names
        opens (or joins) its owner's case under the same alert id the deposit gate uses
        (``deposit:<id>``), and freezes the owner per `ScreeningPolicy`: the coins were credited
        before the listing, so they stay booked, and the freeze stops them leaving.

        The work is paged (`RESCREEN_BATCH` subjects per transaction), so a large platform is
        screened completely without one long transaction holding the database.
        """
        created: list[str] = []
        with self._sessions() as session:
            entry_ids = list(session.scalars(select(WhitelistAddress.id).where(
                WhitelistAddress.removed_ms.is_(None)).order_by(WhitelistAddress.id)))
            withdrawal_ids = list(session.scalars(select(WithdrawalRequest.id).where(
                WithdrawalRequest.state.in_(UNSENT_STATES)).order_by(WithdrawalRequest.id)))
            usernames = list(session.scalars(select(User.username).order_by(User.username)))
            deposit_ids = list(session.scalars(select(ComplianceDeposit.deposit_id).where(
                ComplianceDeposit.sender != "", ComplianceDeposit.decision != QUARANTINED_DEPOSIT)
                .order_by(ComplianceDeposit.deposit_id)))
        for start in range(0, len(entry_ids), RESCREEN_BATCH):
            with self._sessions.begin() as session:
                entries = session.scalars(select(WhitelistAddress).where(
                    WhitelistAddress.id.in_(entry_ids[start:start + RESCREEN_BATCH])))
                for e in entries:
                    created += self._new(session, e.username, e.asset, e.address, f"whitelist:{e.id}")
        for start in range(0, len(withdrawal_ids), RESCREEN_BATCH):
            with self._sessions.begin() as session:
                withdrawals = session.scalars(select(WithdrawalRequest).where(
                    WithdrawalRequest.id.in_(withdrawal_ids[start:start + RESCREEN_BATCH])))
                for w in withdrawals:
                    created += self._new(session, w.username, w.asset, w.destination, f"withdrawal:{w.id}")
        for start in range(0, len(deposit_ids), RESCREEN_BATCH):
            with self._sessions.begin() as session:
                deposits = session.scalars(select(ComplianceDeposit).where(
                    ComplianceDeposit.deposit_id.in_(deposit_ids[start:start + RESCREEN_BATCH])))
                for d in deposits:
                    created += self._new(session, d.owner, d.asset, d.sender, f"deposit:{d.deposit_id}")
        for start in range(0, len(usernames), RESCREEN_BATCH):
            with self._sessions.begin() as session:
                for username in usernames[start:start + RESCREEN_BATCH]:
                    created += self._screen_user_name(session, username)
        return created

    def _new(self, session: Session, username: str, asset: str, address: str, subject: str) -> list[str]:
        return [alert for alert, new in self._screen_destination(session, username, asset, address, subject)
                if new]

    def _screen_user_name(self, session: Session, username: str) -> list[str]:
        created = []
        for hit in self._screen_name_in(session, username):
            row, new = raise_alert(session, AlertInput(
                alert_id=alert_id("user", username, hit.ent_num), kind=SANCTIONS, rule_id=NAME_RULE,
                username=username, subject_kind="user", subject=username, score=hit.score,
                evidence=hit.to_json()), now_ms=self._clock(), actor=SCREEN_ACTOR)
            if new:
                created.append(row.id)
        return created

    def _name_index(self, session: Session) -> list[tuple[int, str, str]]:
        version = session.scalar(select(func.max(SanctionsListVersion.version)))
        if version is None:
            return []
        if self._names is None or self._names[0] != version:
            entries = _entries_of(session.get(SanctionsListVersion, version)).entries.values()
            self._names = (version, [(e.ent_num, e.name, n) for e in entries for n in e.names])
        return self._names[1]


def _current(session: Session, *, lock: bool = False) -> SanctionsListVersion | None:
    query = select(SanctionsListVersion).order_by(SanctionsListVersion.version.desc()).limit(1)
    return session.scalar(query.with_for_update() if lock else query)


def _entries_of(row: SanctionsListVersion | None) -> SanctionsList:
    if row is None:
        return SanctionsList({})
    entries = {}
    for item in json.loads(row.entries):
        addresses = tuple(ListedAddress(a["currency"], a["address"], a["family"], a["normalised"])
                          for a in item["addresses"])
        entries[item["ent_num"]] = SdnEntry(item["ent_num"], item["name"], item["sdn_type"], item["programs"],
                                            tuple(item["names"]), addresses, tuple(item["countries"]))
    return SanctionsList(entries)

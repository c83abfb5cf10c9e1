"""Personal data at rest: envelope-encrypted per record through the keystore, reads logged, rotation re-wraps.

A user's identity record (names, date of birth, nationality, identity
document, residential address) is stored as one AES-256-GCM ciphertext under
a fresh 256-bit data key; the keystore wraps the data key under the KEK
``compliance-pii`` (`Keystore.generate_data_key`). The row holds only the
wrapped key, the KEK version and the ciphertext, so a reader of the database
(or of a backup) learns nothing but the username and when it changed. The
associated data binds the ciphertext to the username and revision: a row
copied onto another user does not open.

Values never reach a log, an exception message or the security log: errors
name the field and the rule, not the value; the security log records who
stored, read, erased or re-wrapped whose record, and which fields. After a
KEK rotation, `rewrap` gives every older record a fresh data key wrapped by
the newest KEK version (the record is re-encrypted under it).
"""

from __future__ import annotations

import base64
import datetime
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody import security_log
from custody.compliance.codes import ComplianceCode, ComplianceError
from custody.compliance.models import PersonalDataRecord
from custody.keystore import Keystore, KeystoreError, KeystoreErrorCode, KeyType
from custody.keystore.envelope import gcm_open, gcm_seal

PII_KEY_NAME = "compliance-pii"
AAD_DOMAIN = b"strongroom/compliance/pii/v1\x00"
DOCUMENT_TYPES = ("passport", "national_id", "driving_licence", "residence_permit")
TEXT_FIELDS = {"given_names": 128, "family_name": 128, "document_number": 64, "street": 256, "city": 128,
               "postcode": 32}
REQUIRED = ("given_names", "family_name", "date_of_birth", "nationality", "document_type", "document_number",
            "street", "city", "postcode", "country")
COUNTRY_FIELDS = ("nationality", "country")
REWRAP_BATCH = 200
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def validate_record(body: Mapping[str, Any], today: datetime.date) -> dict[str, str]:
    """Return the canonical record or raise ``personal_data_invalid`` naming the field, never its value."""
    unknown = sorted(set(body) - set(REQUIRED))
    if unknown:
        raise _invalid(f"unknown field {unknown[0][:40]!r}; fields are {', '.join(REQUIRED)}")
    record: dict[str, str] = {}
    for name in REQUIRED:
        value = body.get(name)
        if not isinstance(value, str) or not value.strip():
            raise _invalid(f"{name} is required (a non-empty string)")
        record[name] = value.strip()
    for name, max_len in TEXT_FIELDS.items():
        if len(record[name]) > max_len or any(ord(c) < 32 for c in record[name]):
            raise _invalid(f"{name} must be 1..{max_len} printable characters")
    for name in COUNTRY_FIELDS:
        record[name] = record[name].upper()
        if not _COUNTRY.match(record[name]):
            raise _invalid(f"{name} must be an ISO 3166-1 alpha-2 code")
    if record["document_type"] not in DOCUMENT_TYPES:
        raise _invalid(f"document_type must be one of {', '.join(DOCUMENT_TYPES)}")
    born = _date(record["date_of_birth"])
    if born is None or not datetime.date(1900, 1, 1) <= born <= today:
        raise _invalid("date_of_birth must be a real date YYYY-MM-DD between 1900-01-01 and today")
    return record


def _date(text: str) -> datetime.date | None:
    if not _DATE.match(text):
        return None
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        return None


def _invalid(message: str) -> ComplianceError:
    return ComplianceError(ComplianceCode.PERSONAL_DATA_INVALID, message)


def _aad(username: str, revision: int) -> bytes:
    return AAD_DOMAIN + f"{username}\x00{revision}".encode()


class EnvelopeBox:
    """Seal JSON objects under a fresh data key each, wrapped by the keystore's KEK ``key_name``."""

    def __init__(self, keystore: Keystore, key_name: str) -> None:
        self._keystore = keystore
        self.key_name = key_name
        self._ready = False

    def seal(self, aad: bytes, value: Any) -> tuple[int, str, str]:
        """Return ``(KEK version, wrapped data key, base64 ciphertext)`` of ``value`` as canonical JSON."""
        self.ensure_key()
        plaintext = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        with self._keystore.generate_data_key(self.key_name) as data_key:
            sealed = gcm_seal(data_key.plaintext, plaintext, aad)
            return data_key.key_version, data_key.wrapped.decode("ascii"), base64.b64encode(sealed).decode()

    def open(self, kek_name: str, wrapped: str, ciphertext: str, aad: bytes) -> Any:
        """Return the value sealed by :meth:`seal` under the same associated data."""
        with self._keystore.decrypt_data_key(kek_name, wrapped.encode("ascii")) as data_key:
            plaintext = gcm_open(data_key.plaintext, base64.b64decode(ciphertext), aad)
        return json.loads(plaintext)

    def latest_version(self) -> int:
        self.ensure_key()
        return self._keystore.key_info(self.key_name).latest_version

    def ensure_key(self) -> None:
        """Create the KEK on first use (AES-256-GCM); a concurrent creator wins harmlessly."""
        if self._ready:
            return
        try:
            self._keystore.key_info(self.key_name)
        except KeystoreError as exc:
            if exc.code is not KeystoreErrorCode.KEY_NOT_FOUND:
                raise
            try:
                self._keystore.create_key(self.key_name, KeyType.AES256_GCM)
            except KeystoreError as again:
                if again.code is not KeystoreErrorCode.KEY_EXISTS:
                    raise
        self._ready = True


class PersonalData:
    """Store, read (logged), erase and re-wrap users' encrypted identity records."""

    def __init__(self, sessions: sessionmaker[Session], keystore: Keystore, clock: Callable[[], int],
                 key_name: str = PII_KEY_NAME) -> None:
        self._sessions = sessions
        self._box = EnvelopeBox(keystore, key_name)
        self._clock = clock
        self._key_name = key_name

    def store(self, username: str, body: Mapping[str, Any], *, actor: str) -> dict[str, Any]:
        """Validate and store ``username``'s record (replacing any); answer without echoing a value."""
        now_ms = self._clock()
        today = datetime.datetime.fromtimestamp(now_ms / 1000, tz=datetime.UTC).date()
        record = validate_record(body, today)
        with self._sessions.begin() as session:
            row = session.get(PersonalDataRecord, username, with_for_update=True)
            revision = 1 if row is None else row.revision + 1
            kek_version, wrapped, sealed = self._seal(username, revision, record)
            if row is None:
                row = PersonalDataRecord(username=username, created_ms=now_ms)
                session.add(row)
            row.kek_name, row.kek_version, row.wrapped_key, row.ciphertext = (
                self._key_name, kek_version, wrapped, sealed)
            row.revision, row.updated_ms = revision, now_ms
            security_log.append(session, at_ms=now_ms, actor=actor, action="compliance.pii.store",
                                subject=username, details={"revision": revision, "fields": list(REQUIRED)})
        return {"username": username, "revision": revision, "updated_ms": now_ms}

    def read(self, viewer: str, username: str, purpose: str) -> dict[str, Any]:
        """Return ``username``'s record to an officer (not their own); the read is in the security log."""
        why = purpose.strip()
        if not why or len(why) > 256:
            raise _invalid("purpose must be 1..256 characters: every read of personal data says why")
        with self._sessions.begin() as session:
            row = session.get(PersonalDataRecord, username)
            if row is None or username == viewer:
                raise ComplianceError(ComplianceCode.PERSONAL_DATA_NOT_FOUND,
                                      f"no personal data on file for {username[:64]!r}")
            record = self._open(row)
            security_log.append(session, at_ms=self._clock(), actor=viewer, action="compliance.pii.read",
                                subject=username, details={"revision": row.revision, "purpose": why})
            return {"username": username, "revision": row.revision, "updated_ms": row.updated_ms,
                    "record": record}

    def erase(self, officer: str, username: str, reason: str) -> None:
        """Delete ``username``'s record (retention ended or an erasure request); log who and why."""
        why = reason.strip()
        if not why or len(why) > 512:
            raise _invalid("reason must be 1..512 characters")
        with self._sessions.begin() as session:
            row = session.get(PersonalDataRecord, username, with_for_update=True)
            if row is None or username == officer:
                raise ComplianceError(ComplianceCode.PERSONAL_DATA_NOT_FOUND,
                                      f"no personal data on file for {username[:64]!r}")
            session.delete(row)
            security_log.append(session, at_ms=self._clock(), actor=officer, action="compliance.pii.erase",
                                subject=username, details={"revision": row.revision, "reason": why})

    def rewrap(self, *, actor: str, reason: str | None = None) -> int:
        """Re-encrypt every record whose data key is wrapped by an older KEK version; return how many.

        With ``reason`` (an officer's request: API, CLI) the run itself is security-logged
        (``compliance.pii.rewrap_run``: who, why, how many), also when nothing was left to do.
        """
        why = None if reason is None else reason.strip()
        if why is not None and (not why or len(why) > 512):
            raise _invalid("reason must be 1..512 characters")
        done = self._rewrap(actor)
        if why is not None:
            with self._sessions.begin() as session:
                security_log.append(session, at_ms=self._clock(), actor=actor,
                                    action="compliance.pii.rewrap_run", subject=self._key_name,
                                    details={"records": done, "reason": why})
        return done

    def _rewrap(self, actor: str) -> int:
        latest = self._box.latest_version()
        done = 0
        while True:
            with self._sessions.begin() as session:
                rows = list(session.scalars(select(PersonalDataRecord).where(
                    PersonalDataRecord.kek_version < latest).order_by(PersonalDataRecord.username)
                    .limit(REWRAP_BATCH).with_for_update()))
                for row in rows:
                    record = self._open(row)
                    row.kek_version, row.wrapped_key, row.ciphertext = self._seal(row.username, row.revision,
                                                                                  record)
                if rows:
                    security_log.append(session, at_ms=self._clock(), actor=actor,
                                        action="compliance.pii.rewrap", subject=self._key_name,
                                        details={"records": len(rows), "kek_version": latest})
            done += len(rows)
            if len(rows) < REWRAP_BATCH:
                return done

    def _seal(self, username: str, revision: int, record: dict[str, str]) -> tuple[int, str, str]:
        return self._box.seal(_aad(username, revision), record)

    def _open(self, row: PersonalDataRecord) -> dict[str, str]:
        found: dict[str, str] = self._box.open(row.kek_name, row.wrapped_key, row.ciphertext,
                                               _aad(row.username, row.revision))
        return found

"""Parse OFAC's SDN CSV set (sdn.csv, add.csv, alt.csv, sdn_comments.csv) into a sanctions list.

The public format: files without a header row, fields quoted with ``"``, the
string ``-0-`` for an empty field, and every row keyed by ``ent_num``.
``sdn.csv`` has 12 columns (ent_num, SDN_Name, SDN_Type, Program, Title,
Call_Sign, Vess_type, Tonnage, GRT, Vess_flag, Vess_owner, Remarks);
``alt.csv`` 5 (ent_num, alt_num, alt_type, alt_name, alt_remarks);
``add.csv`` 6 (ent_num, add_num, address, city/state/postal, country,
add_remarks); ``sdn_comments.csv`` 2 (ent_num, remarks continued). Digital
currency addresses are in the remarks as ``Digital Currency Address - XBT
<address>;`` (one entry per address, ``alt.`` before the later ones).

Parsing is pure (text in, `SanctionsList` out) and refuses the whole list on
the first malformed row, naming its file and line: a half-read list would
silently unscreen whoever it dropped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

from custody.compliance.addresses import family_of_currency, normalise

NULL = "-0-"
MAX_ENTRIES = 200_000
MAX_FILE_BYTES = 64 * 1024 * 1024
SDN_COLUMNS, ALT_COLUMNS, ADD_COLUMNS, COMMENT_COLUMNS = 12, 5, 6, 2
_DIGITAL_CURRENCY = re.compile(r"Digital Currency Address - ([A-Za-z0-9]{2,10})\s+([A-Za-z0-9:]{10,128})")


class SdnFormatError(ValueError):
    """The files are not in the SDN CSV format; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class ListedAddress:
    """One digital-currency address of an entry, as listed and in canonical form."""

    currency: str
    address: str
    family: str
    normalised: str


@dataclass(frozen=True, slots=True)
class SdnEntry:
    """One SDN entry (a person, entity, vessel or aircraft) with what screening needs of it."""

    ent_num: int
    name: str
    sdn_type: str
    programs: str
    names: tuple[str, ...]  # The primary name first, then the alternates (aka, fka, nka).
    addresses: tuple[ListedAddress, ...]
    countries: tuple[str, ...]
    remarks: str = field(default="", compare=False)  # Kept for people to read; addresses are parsed out.

    def to_json(self) -> dict[str, Any]:
        return {"ent_num": self.ent_num, "name": self.name, "sdn_type": self.sdn_type,
                "programs": self.programs, "names": list(self.names), "countries": list(self.countries),
                "addresses": [{"currency": a.currency, "address": a.address, "family": a.family,
                               "normalised": a.normalised} for a in self.addresses]}


@dataclass(frozen=True, slots=True)
class SanctionsList:
    """A parsed list: entries by ent_num and the digest of their canonical JSON."""

    entries: dict[int, SdnEntry] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        canonical = json.dumps([self.entries[k].to_json() for k in sorted(self.entries)],
                               sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def address_keys(self) -> set[tuple[str, str, int]]:
        """Return ``(family, normalised address, ent_num)`` of every listed address."""
        return {(a.family, a.normalised, e.ent_num) for e in self.entries.values() for a in e.addresses}


@dataclass(frozen=True, slots=True)
class ListDiff:
    """What changed from one list version to the next."""

    added: tuple[int, ...]
    removed: tuple[int, ...]
    changed: tuple[int, ...]
    addresses_added: tuple[str, ...]
    addresses_removed: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"added": list(self.added), "removed": list(self.removed), "changed": list(self.changed),
                "addresses_added": list(self.addresses_added),
                "addresses_removed": list(self.addresses_removed)}


def _field(value: str) -> str:
    value = value.strip()
    return "" if value == NULL else value


def _rows(name: str, text: str, columns: int) -> list[tuple[int, list[str]]]:
    """Return ``(line, fields)`` of each data row; refuse a row of the wrong width or key."""
    if len(text) > MAX_FILE_BYTES:
        raise SdnFormatError(f"{name} is {len(text)} chars, at most {MAX_FILE_BYTES}")
    rows = []
    for line, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
        # OFAC's files end with a DOS end-of-file byte on a line of its own.
        if not fields or (len(fields) == 1 and fields[0].strip() in {"", "\x1a"}):
            continue
        if len(fields) != columns:
            raise SdnFormatError(f"{name} line {line}: {len(fields)} fields, must be {columns}")
        if not fields[0].strip().isdigit():
            raise SdnFormatError(f"{name} line {line}: ent_num was {fields[0][:20]!r}, must be a number")
        rows.append((line, [_field(f) for f in fields]))
        if len(rows) > MAX_ENTRIES:
            raise SdnFormatError(f"{name} has more than {MAX_ENTRIES} rows")
    return rows


def digital_currency_addresses(remarks: str) -> tuple[ListedAddress, ...]:
    """Return the digital-currency addresses named in an entry's remarks, in order, once each."""
    found: dict[tuple[str, str], ListedAddress] = {}
    for currency, address in _DIGITAL_CURRENCY.findall(remarks):
        family = family_of_currency(currency, address)
        listed = ListedAddress(currency.upper(), address, family, normalise(family, address))
        found.setdefault((family, listed.normalised), listed)
    return tuple(found.values())


def parse_sdn(sdn: str, alt: str = "", add: str = "", comments: str = "") -> SanctionsList:
    """Parse the SDN CSV set; raise `SdnFormatError` on the first malformed row."""
    base: dict[int, list[str]] = {}
    for line, fields in _rows("sdn.csv", sdn, SDN_COLUMNS):
        ent_num = int(fields[0])
        if ent_num in base:
            raise SdnFormatError(f"sdn.csv line {line}: ent_num {ent_num} appears twice")
        if not fields[1]:
            raise SdnFormatError(f"sdn.csv line {line}: entry {ent_num} has no name")
        base[ent_num] = fields
    extra_remarks: dict[int, list[str]] = {}
    for line, fields in _rows("sdn_comments.csv", comments, COMMENT_COLUMNS):
        extra_remarks.setdefault(_known(base, fields[0], "sdn_comments.csv", line), []).append(fields[1])
    alt_names: dict[int, list[str]] = {}
    for line, fields in _rows("alt.csv", alt, ALT_COLUMNS):
        if fields[3]:
            alt_names.setdefault(_known(base, fields[0], "alt.csv", line), []).append(fields[3])
    countries: dict[int, list[str]] = {}
    for line, fields in _rows("add.csv", add, ADD_COLUMNS):
        if fields[4]:
            countries.setdefault(_known(base, fields[0], "add.csv", line), []).append(fields[4])
    entries = {}
    for ent_num, fields in base.items():
        remarks = " ".join([fields[11], *extra_remarks.get(ent_num, [])]).strip()
        names = tuple(dict.fromkeys([fields[1], *alt_names.get(ent_num, [])]))
        entries[ent_num] = SdnEntry(ent_num, fields[1], fields[2], fields[3], names,
                                    digital_currency_addresses(remarks),
                                    tuple(dict.fromkeys(countries.get(ent_num, []))), remarks)
    return SanctionsList(entries)


def _known(base: dict[int, list[str]], ent_num: str, name: str, line: int) -> int:
    number = int(ent_num)
    if number not in base:
        raise SdnFormatError(f"{name} line {line}: ent_num {number} is not in sdn.csv")
    return number


def diff(old: SanctionsList, new: SanctionsList) -> ListDiff:
    """Return the entries and addresses added, removed or changed from ``old`` to ``new``."""
    old_keys, new_keys = set(old.entries), set(new.entries)
    changed = sorted(k for k in old_keys & new_keys if old.entries[k] != new.entries[k])
    old_addresses = {f"{f}:{a}" for f, a, _ in old.address_keys()}
    new_addresses = {f"{f}:{a}" for f, a, _ in new.address_keys()}
    return ListDiff(tuple(sorted(new_keys - old_keys)), tuple(sorted(old_keys - new_keys)), tuple(changed),
                    tuple(sorted(new_addresses - old_addresses)),
                    tuple(sorted(old_addresses - new_addresses)))

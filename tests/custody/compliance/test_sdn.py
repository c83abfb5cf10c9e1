"""The OFAC SDN CSV parser and per-chain address normalisation (pure: no database)."""

from __future__ import annotations

import pytest

from custody.compliance.addresses import BITCOIN, EVM, normalise, normalise_for_asset
from custody.compliance.screening import read_sdn_directory
from custody.compliance.sdn import SdnFormatError, diff, parse_sdn

from .conftest import FIXTURE_DIR, LISTED_BASE58, LISTED_BTC, LISTED_ETH_EIP55, LISTED_USDT_EVM

ROW = ('{n},"NAME {n}","individual","CYBER2",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,'
       '"Digital Currency Address - XBT bc1qaddress{n}0000000000; FABRICATED."\n')


def test_fixture_list_parses_entries_names_countries_and_addresses() -> None:
    parsed = read_sdn_directory(FIXTURE_DIR)
    assert sorted(parsed.entries) == [90001, 90002, 90003]
    zorblax = parsed.entries[90001]
    assert zorblax.names == ("ZORBLAX, Ivanko", "ZORBLAKS, Ivan")
    assert zorblax.countries == ("Freedonia",)
    assert [(a.currency, a.family, a.normalised) for a in zorblax.addresses] == [
        ("XBT", BITCOIN, LISTED_BTC), ("ETH", EVM, LISTED_ETH_EIP55.lower())]
    # A USDT address in 0x form is an EVM address (screened for ETH and USDC); XMR is kept as foreign.
    listed = parsed.entries[90002].addresses
    assert [(a.currency, a.family) for a in listed] == [("USDT", EVM), ("XMR", "xmr")]
    assert parsed.entries[90002].sdn_type == ""  # -0- is empty
    # The address in the remarks' continuation file counts like one in sdn.csv.
    assert [a.normalised for a in parsed.entries[90003].addresses] == [LISTED_BASE58]
    assert LISTED_USDT_EVM.lower() in {a for _, a, _ in parsed.address_keys()}


@pytest.mark.parametrize(("sdn", "alt", "message"), [
    ('1,"X","individual"\n', "", "sdn.csv line 1: 3 fields, must be 12"),
    (ROW.format(n="abc"), "", "ent_num was 'abc'"),
    (ROW.format(n=1) + ROW.format(n=1), "", "ent_num 1 appears twice"),
    (ROW.format(n=1), '7,70,"aka","Y",-0- \n', "alt.csv line 1: ent_num 7 is not in sdn.csv"),
    ('1,-0- ,"individual",-0-,-0-,-0-,-0-,-0-,-0-,-0-,-0-,-0-\n', "", "entry 1 has no name"),
])
def test_sdn_malformed_row_refuses_whole_list_naming_the_line(sdn: str, alt: str, message: str) -> None:
    with pytest.raises(SdnFormatError, match=message):
        parse_sdn(sdn, alt)


def test_sdn_dos_end_of_file_byte_and_blank_lines_are_ignored() -> None:
    parsed = parse_sdn(ROW.format(n=5) + "\n\x1a\n")
    assert list(parsed.entries) == [5]


def test_diff_names_added_removed_changed_entries_and_addresses() -> None:
    old = parse_sdn(ROW.format(n=1) + ROW.format(n=2))
    changed_two = ROW.format(n=2).replace("bc1qaddress2", "bc1qaddressTWO")
    new = parse_sdn(ROW.format(n=3) + changed_two)
    change = diff(old, new)
    assert (change.added, change.removed, change.changed) == ((3,), (1,), (2,))
    assert change.addresses_added == ("bitcoin:bc1qaddress30000000000", "bitcoin:bc1qaddresstwo0000000000")
    assert change.addresses_removed == ("bitcoin:bc1qaddress10000000000", "bitcoin:bc1qaddress20000000000")
    assert diff(new, new).to_json() == {"added": [], "removed": [], "changed": [], "addresses_added": [],
                                        "addresses_removed": []}


@pytest.mark.parametrize(("asset", "address", "expected"), [
    ("ETH", LISTED_ETH_EIP55, (EVM, LISTED_ETH_EIP55.lower())),  # EIP-55 case is only a checksum
    ("USDC", LISTED_ETH_EIP55.upper().replace("0X", "0x"), (EVM, LISTED_ETH_EIP55.lower())),
    ("BTC", LISTED_BTC.upper(), (BITCOIN, LISTED_BTC)),  # bech32 is case-insensitive
    ("BTC", " " + LISTED_BTC + " ", (BITCOIN, LISTED_BTC)),
    ("BTC", LISTED_BASE58, (BITCOIN, LISTED_BASE58)),
])
def test_address_normalisation_per_chain_maps_equivalent_forms_together(
        asset: str, address: str, expected: tuple[str, str]) -> None:
    assert normalise_for_asset(asset, address) == expected


def test_base58_address_case_is_significant() -> None:
    assert normalise(BITCOIN, LISTED_BASE58.lower()) != LISTED_BASE58

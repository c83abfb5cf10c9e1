"""The offline keystore: a BIP39 seed encrypted with a passphrase (scrypt + AES-256-GCM).

`create_keystore` makes a fresh 24-word mnemonic (shown once, for the paper
backup) and writes the encrypted seed to a new file with mode 0600;
`restore_keystore` does the same from an existing mnemonic. scrypt derives
64 bytes from the passphrase: the first half is the AES key, the second a
MAC key for a passphrase check value, so a wrong passphrase and a modified
file are told apart. The file header is the AES-GCM associated data.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from embit import bip39  # type: ignore[import-untyped, unused-ignore]

from signer.bitcoin import root_key
from signer.canonical import canonical_bytes, parse_strict
from signer.fields import Fields
from signer.results import SignerCode, SignerError

KEYSTORE_FORMAT = "strongroom-signer-keystore"
KEYSTORE_VERSION = 1
DEFAULT_SCRYPT_LOG2_N = 17  # 128 MiB with r=8: slow to brute-force, ~0.5 s to open.
MIN_SCRYPT_LOG2_N = 10  # Tests only; `init` refuses less than 15.
MAX_SCRYPT_LOG2_N = 22
MIN_PASSPHRASE_CHARS = 12
MNEMONIC_ENTROPY_BYTES = 32
SEED_BYTES = 64
_CHECK_LABEL = b"strongroom/signer-keystore/passphrase-check"


@dataclass(frozen=True, slots=True)
class CreatedKeystore:
    """What `init` shows once: the mnemonic for paper backup and the public fingerprint."""

    mnemonic: str
    fingerprint: str


def create_keystore(
    path: Path, passphrase: str, *, scrypt_log2_n: int = DEFAULT_SCRYPT_LOG2_N
) -> CreatedKeystore:
    """Generate a mnemonic, encrypt its seed to a new file at `path`; return the mnemonic once."""
    mnemonic = str(bip39.mnemonic_from_bytes(secrets.token_bytes(MNEMONIC_ENTROPY_BYTES)))
    fingerprint = restore_keystore(path, passphrase, mnemonic, scrypt_log2_n=scrypt_log2_n)
    return CreatedKeystore(mnemonic, fingerprint)


def restore_keystore(
    path: Path, passphrase: str, mnemonic: str, *, scrypt_log2_n: int = DEFAULT_SCRYPT_LOG2_N
) -> str:
    """Encrypt the seed of `mnemonic` to a new file at `path`; return the master fingerprint (hex)."""
    words = " ".join(mnemonic.split())
    if not bip39.mnemonic_is_valid(words):
        raise SignerError(
            SignerCode.MNEMONIC_INVALID, "mnemonic is not a valid BIP39 phrase (word or checksum)"
        )
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise SignerError(
            SignerCode.PASSPHRASE_WRONG,
            f"passphrase was {len(passphrase)} characters, at least {MIN_PASSPHRASE_CHARS}",
        )
    if not MIN_SCRYPT_LOG2_N <= scrypt_log2_n <= MAX_SCRYPT_LOG2_N:
        raise ValueError(
            f"scrypt_log2_n was {scrypt_log2_n}, must be {MIN_SCRYPT_LOG2_N}..{MAX_SCRYPT_LOG2_N}"
        )
    seed = bytes(bip39.mnemonic_to_seed(words))
    fingerprint = str(root_key(seed, "main").my_fingerprint.hex())
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    header: dict[str, object] = {
        "format": KEYSTORE_FORMAT,
        "version": KEYSTORE_VERSION,
        "fingerprint": fingerprint,
        "kdf": {"name": "scrypt", "log2_n": scrypt_log2_n, "r": 8, "p": 1, "salt": salt.hex()},
        "cipher": {"name": "aes-256-gcm", "nonce": nonce.hex()},
    }
    enc_key, mac_key = _derive(passphrase, salt, scrypt_log2_n)
    ciphertext = AESGCM(enc_key).encrypt(nonce, seed, canonical_bytes(header))
    document = {**header, "check": _check_value(mac_key), "ciphertext": ciphertext.hex()}
    _write_new(path, canonical_bytes(document))
    return fingerprint


def load_seed(path: Path, passphrase: str) -> bytes:
    """Decrypt and return the seed; raise `SignerError` with a clear reason on any failure."""
    if not path.exists():
        raise SignerError(SignerCode.KEYSTORE_MISSING, f"no keystore at {path}; run `strongroom-signer init`")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SignerError(
            SignerCode.KEYSTORE_PERMISSIONS, f"keystore {path} has mode {mode:o}; it must be 600 (chmod 600)"
        )
    header, check, ciphertext, log2_n, salt, nonce = _parse(path.read_bytes())
    enc_key, mac_key = _derive(passphrase, salt, log2_n)
    if not hmac.compare_digest(_check_value(mac_key), check):
        raise SignerError(SignerCode.PASSPHRASE_WRONG, "wrong passphrase for this keystore")
    try:
        seed = AESGCM(enc_key).decrypt(nonce, ciphertext, canonical_bytes(header))
    except InvalidTag as exc:
        raise SignerError(
            SignerCode.KEYSTORE_TAMPERED, f"keystore {path} was modified: it does not decrypt"
        ) from exc
    if len(seed) != SEED_BYTES or root_key(seed, "main").my_fingerprint.hex() != header["fingerprint"]:
        raise SignerError(
            SignerCode.KEYSTORE_TAMPERED, f"keystore {path} seed does not match its fingerprint"
        )
    return seed


def keystore_fingerprint(path: Path) -> str:
    """Return the master fingerprint recorded in the file (public; no passphrase needed)."""
    header = _parse(path.read_bytes())[0]
    return str(header["fingerprint"])


def _parse(data: bytes) -> tuple[dict[str, object], str, bytes, int, bytes, bytes]:
    try:
        document = parse_strict(data, "keystore")
        f = Fields(document, "keystore", SignerCode.KEYSTORE_MALFORMED)
        if f.raw("format") != KEYSTORE_FORMAT or f.raw("version") != KEYSTORE_VERSION:
            raise f.error(f"keystore must be {KEYSTORE_FORMAT} version {KEYSTORE_VERSION}")
        fingerprint = f.hex_bytes("fingerprint", 4).hex()
        kdf, cipher = f.obj("kdf"), f.obj("cipher")
        kdf.choice("name", ("scrypt",))
        log2_n = kdf.integer("log2_n", MIN_SCRYPT_LOG2_N, MAX_SCRYPT_LOG2_N)
        kdf.integer("r", 8, 8)
        kdf.integer("p", 1, 1)
        salt = kdf.hex_bytes("salt", 16)
        cipher.choice("name", ("aes-256-gcm",))
        nonce = cipher.hex_bytes("nonce", 12)
        check = f.hex_bytes("check", 32).hex()
        ciphertext = f.hex_bytes("ciphertext", SEED_BYTES + 16)
        for fields in (kdf, cipher, f):
            fields.finish()
    except SignerError as exc:
        raise SignerError(
            SignerCode.KEYSTORE_MALFORMED, f"keystore is not readable: {exc.refusal.message}"
        ) from exc
    header = {k: v for k, v in document.items() if k not in ("check", "ciphertext")}
    assert header["fingerprint"] == fingerprint
    return header, check, ciphertext, log2_n, salt, nonce


def _derive(passphrase: str, salt: bytes, log2_n: int) -> tuple[bytes, bytes]:
    key = Scrypt(salt=salt, length=64, n=2**log2_n, r=8, p=1).derive(passphrase.encode("utf-8"))
    return key[:32], key[32:]


def _check_value(mac_key: bytes) -> str:
    return hmac.new(mac_key, _CHECK_LABEL, hashlib.sha256).hexdigest()


def _write_new(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise SignerError(
            SignerCode.KEYSTORE_EXISTS, f"{path} already exists; refusing to overwrite a keystore"
        ) from exc
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)

"""`strongroom-signer`: the offline signer's command line.

    strongroom-signer init [--restore]          create (or restore) the encrypted seed
    strongroom-signer keys [--network N]        show the public keys to register with the platform
    strongroom-signer inspect FILE [--json]     the intent in plain words and every check
    strongroom-signer verify FILE [--json]      the checks only; exit 0 if it may be signed
    strongroom-signer sign FILE --out SIGNED    verify, confirm (and accept warnings), sign, log, write
    strongroom-signer log                       what has been signed (chain verified)
    strongroom-signer qr split FILE --out-dir D / qr join FRAMES... --out FILE

Files live in --home (default $STRONGROOM_SIGNER_HOME or ~/.strongroom-signer):
anchors.json (trust anchors), keystore.json (encrypted seed), signing-log.jsonl.
Exit status: 0 done, 1 refused or failed (with a 7xxx code), 2 usage error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from embit import bip39  # type: ignore[import-untyped, unused-ignore]
from embit.networks import NETWORKS  # type: ignore[import-untyped, unused-ignore]

from signer import qr
from signer.anchors import TrustAnchors
from signer.bitcoin import root_key
from signer.bundle import Bundle
from signer.canonical import sha256_hex
from signer.display import describe, report_json
from signer.ethereum import ethereum_address
from signer.keystore import DEFAULT_SCRYPT_LOG2_N, create_keystore, load_seed, restore_keystore
from signer.network import InterfaceReader, online_interfaces, read_interfaces
from signer.results import SignerCode, SignerError
from signer.signing import sign_bundle
from signer.signing_log import EVENT_ONLINE_OVERRIDE, EVENT_SIGNED, History, SigningLog
from signer.verification import Verification, verify_bundle

EXIT_OK = 0
EXIT_REFUSED = 1
HOME_ENV = "STRONGROOM_SIGNER_HOME"
DEFAULT_ETHEREUM_PATH = "m/44'/60'/0'/0/0"
MIN_INIT_SCRYPT_LOG2_N = 15
CONFIRM_WORD = "sign"
ACCEPT_WORD = "accept"


@dataclass
class CliEnvironment:
    """Everything the CLI takes from the machine; tests replace parts of it."""

    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    now_ms: Callable[[], int] = field(default_factory=lambda: lambda: time.time_ns() // 1_000_000)
    interfaces: InterfaceReader = read_interfaces
    read_secret: Callable[[str], str] = getpass.getpass
    read_line: Callable[[str], str] = input
    min_init_scrypt_log2_n: int = MIN_INIT_SCRYPT_LOG2_N


def main(argv: Sequence[str] | None = None, env: CliEnvironment | None = None) -> int:
    """Run one command; return the exit status."""
    env = env or CliEnvironment()
    args = _parser().parse_args(argv)
    home = Path(args.home or os.environ.get(HOME_ENV) or Path.home() / ".strongroom-signer")
    try:
        status: int = args.run(args, home, env)
    except SignerError as exc:
        print(f"REFUSED {exc.refusal}", file=env.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        print(f"error: {exc}", file=env.stderr)
        return EXIT_REFUSED
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="strongroom-signer", description="Strongroom offline signer")
    parser.add_argument("--home", help=f"signer directory (default ${HOME_ENV} or ~/.strongroom-signer)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    init = commands.add_parser("init", help="create the encrypted seed (mnemonic shown once)")
    init.add_argument("--restore", action="store_true", help="restore from an existing mnemonic")
    init.add_argument("--mnemonic-file", type=Path, help="read the mnemonic to restore from this file")
    init.add_argument("--scrypt-log2-n", type=int, default=DEFAULT_SCRYPT_LOG2_N)
    init.set_defaults(run=_init)
    keys = commands.add_parser("keys", help="show public keys to register with the platform")
    keys.add_argument("--network", default="main", choices=sorted(NETWORKS))
    keys.set_defaults(run=_keys)
    for name, run, text in (
        ("inspect", _inspect, "show the intent and every check"),
        ("verify", _verify, "check a bundle; exit 0 if it may be signed"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("file", type=Path)
        command.add_argument("--json", action="store_true", help="print one JSON object instead")
        command.set_defaults(run=run)
    sign = commands.add_parser("sign", help="verify, confirm and sign a bundle")
    sign.add_argument("file", type=Path)
    sign.add_argument("--out", type=Path, required=True)
    sign.add_argument("--yes", action="store_true", help="do not ask for confirmation (scripts)")
    sign.add_argument(
        "--accept-warnings",
        action="store_true",
        help="with --yes: sign even if there are warnings (a high fee); without it they refuse (7066)",
    )
    sign.add_argument("--i-know-this-machine-is-online", dest="online_ok", action="store_true")
    sign.add_argument(
        "--resume",
        action="store_true",
        help="write the answer of a bundle this signer already signed (the log holds it) but whose "
        "answer file was never written, e.g. after a crash; byte for byte the logged signature",
    )
    sign.set_defaults(run=_sign)
    log = commands.add_parser("log", help="show what this signer has signed")
    log.set_defaults(run=_log)
    for command in (init, keys, sign):
        command.add_argument("--passphrase-file", type=Path, help="read the passphrase from this file")
    _qr_parser(commands.add_parser("qr", help="QR frame transport"))
    return parser


def _qr_parser(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(required=True, metavar="ACTION")
    split = commands.add_parser("split", help="split a file into QR frames")
    split.add_argument("file", type=Path)
    split.add_argument("--out-dir", type=Path, required=True)
    split.add_argument("--chunk-bytes", type=int, default=qr.DEFAULT_CHUNK_BYTES)
    split.add_argument("--png", action="store_true", help="also write frame-NNN.png")
    split.add_argument("--terminal", action="store_true", help="also draw each frame on the terminal")
    split.set_defaults(run=_qr_split)
    join = commands.add_parser("join", help="reassemble frames (text files, one frame per line)")
    join.add_argument("frames", type=Path, nargs="+")
    join.add_argument("--out", type=Path, required=True)
    join.set_defaults(run=_qr_join)


def _secret(env: CliEnvironment, prompt: str) -> str:
    try:
        return env.read_secret(prompt)
    except (EOFError, KeyboardInterrupt):
        raise SignerError(SignerCode.NOT_CONFIRMED, "no input; nothing was done") from None


def _passphrase(args: argparse.Namespace, env: CliEnvironment, *, twice: bool = False) -> str:
    if args.passphrase_file is not None:
        return str(args.passphrase_file.read_text(encoding="utf-8").rstrip("\n"))
    passphrase = _secret(env, "Keystore passphrase: ")
    if twice and _secret(env, "Repeat passphrase: ") != passphrase:
        raise SignerError(SignerCode.PASSPHRASE_WRONG, "the two passphrases differ")
    return passphrase


def _init(args: argparse.Namespace, home: Path, env: CliEnvironment) -> int:
    if args.scrypt_log2_n < env.min_init_scrypt_log2_n:
        print(f"--scrypt-log2-n must be at least {env.min_init_scrypt_log2_n}", file=env.stderr)
        return EXIT_REFUSED
    path = home / "keystore.json"
    if path.exists():
        raise SignerError(
            SignerCode.KEYSTORE_EXISTS, f"{path} already exists; refusing to overwrite a keystore"
        )
    if args.restore:
        mnemonic = (
            args.mnemonic_file.read_text(encoding="utf-8")
            if args.mnemonic_file
            else _secret(env, "Mnemonic (24 words): ")
        )
        passphrase = _passphrase(args, env, twice=True)
        fingerprint = restore_keystore(path, passphrase, mnemonic, scrypt_log2_n=args.scrypt_log2_n)
        print(f"restored keystore {path} (fingerprint {fingerprint})", file=env.stdout)
    else:
        passphrase = _passphrase(args, env, twice=True)
        created = create_keystore(path, passphrase, scrypt_log2_n=args.scrypt_log2_n)
        mnemonic, fingerprint = created.mnemonic, created.fingerprint
        print(
            "WRITE THESE 24 WORDS ON PAPER NOW. They are shown once and are the only backup:", file=env.stdout
        )
        print("", file=env.stdout)
        print(mnemonic, file=env.stdout)
        print("", file=env.stdout)
        print(f"created keystore {path} (fingerprint {fingerprint})", file=env.stdout)
    _print_keys(bip39.mnemonic_to_seed(" ".join(mnemonic.split())), "main", env)
    _print_keys(bip39.mnemonic_to_seed(" ".join(mnemonic.split())), "test", env)
    return EXIT_OK


def _keys(args: argparse.Namespace, home: Path, env: CliEnvironment) -> int:
    _print_keys(load_seed(home / "keystore.json", _passphrase(args, env)), args.network, env)
    return EXIT_OK


def _print_keys(seed: bytes, network: str, env: CliEnvironment) -> None:
    """Print the BIP48 P2WSH cosigner key and the first Ethereum address (all public)."""
    root = root_key(seed, network)
    coin = 0 if network == "main" else 1
    path = f"m/48h/{coin}h/0h/2h"
    xpub = root.derive(path).to_public().to_string(version=NETWORKS[network]["xpub"])
    origin = f"{root.my_fingerprint.hex()}{path[1:]}"
    print(f"bitcoin {network} cosigner key: [{origin}]{xpub}/<0;1>/*", file=env.stdout)
    if network == "main":
        print(
            f"ethereum address {DEFAULT_ETHEREUM_PATH}: {ethereum_address(seed, DEFAULT_ETHEREUM_PATH)}",
            file=env.stdout,
        )


def _load(args: argparse.Namespace, home: Path) -> tuple[Bundle, TrustAnchors, SigningLog]:
    anchors = TrustAnchors.from_bytes((home / "anchors.json").read_bytes())
    bundle = Bundle.from_bytes(args.file.read_bytes())
    return bundle, anchors, SigningLog(home / "signing-log.jsonl")


def _report(verification: Verification, env: CliEnvironment, now_ms: int, *, with_intent: bool) -> None:
    if with_intent:
        for line in describe(verification, now_ms):
            print(line, file=env.stdout)
        print("CHECKS", file=env.stdout)
    for line in verification.facts:
        print(f"  - {line}", file=env.stdout)
    for warning in verification.warnings:
        print(f"WARNING {warning}", file=env.stdout)
    for refusal in verification.refusals:
        print(f"REFUSED {refusal}", file=env.stdout)
    if verification.ok:
        accept = " after accepting the warnings above" if verification.warnings else ""
        print(f"VERIFIED: every check passed; this bundle may be signed{accept}", file=env.stdout)


def _check_command(args: argparse.Namespace, home: Path, env: CliEnvironment, *, with_intent: bool) -> int:
    bundle, anchors, log = _load(args, home)
    now_ms = env.now_ms()
    verification = verify_bundle(bundle, anchors, now_ms, log.history())
    if args.json:
        print(json.dumps(report_json(verification, now_ms), indent=2, sort_keys=True), file=env.stdout)
    else:
        _report(verification, env, now_ms, with_intent=with_intent)
    return EXIT_OK if verification.ok else EXIT_REFUSED


def _inspect(args: argparse.Namespace, home: Path, env: CliEnvironment) -> int:
    return _check_command(args, home, env, with_intent=True)


def _verify(args: argparse.Namespace, home: Path, env: CliEnvironment) -> int:
    return _check_command(args, home, env, with_intent=False)


def _ask(env: CliEnvironment, prompt: str) -> str:
    """Read one answer; end of input or Ctrl-C is "no", never a traceback."""
    try:
        return env.read_line(prompt).strip()
    except (EOFError, KeyboardInterrupt):
        print("", file=env.stdout)
        return ""


def _confirm(args: argparse.Namespace, verification: Verification, env: CliEnvironment) -> None:
    """Raise unless the operator confirmed signing and accepted every warning."""
    if verification.warnings:
        if args.yes and not args.accept_warnings:
            raise SignerError(
                SignerCode.WARNING_NOT_ACCEPTED,
                f"{len(verification.warnings)} warning(s) above; pass --accept-warnings with --yes, "
                "or sign interactively. Nothing was signed",
            )
        if not args.yes and _ask(env, f"Type '{ACCEPT_WORD}' to accept the warnings above: ") != ACCEPT_WORD:
            raise SignerError(SignerCode.WARNING_NOT_ACCEPTED, "warnings not accepted; nothing was signed")
    if not args.yes and _ask(env, f"Type '{CONFIRM_WORD}' to sign this bundle: ") != CONFIRM_WORD:
        raise SignerError(SignerCode.NOT_CONFIRMED, "not confirmed; nothing was signed")


def _sign(args: argparse.Namespace, home: Path, env: CliEnvironment) -> int:
    log = SigningLog(home / "signing-log.jsonl")
    _check_offline(args, log, env)
    if args.out.exists():
        raise SignerError(SignerCode.NOT_CONFIRMED, f"{args.out} already exists; not overwriting it")
    bundle, anchors, _ = _load(args, home)
    if args.resume:
        return _resume(args, home, env, bundle, anchors, log)
    now_ms = env.now_ms()
    verification = verify_bundle(bundle, anchors, now_ms, log.history())
    _report(verification, env, now_ms, with_intent=True)
    if not verification.ok:
        print("NOTHING WAS SIGNED", file=env.stderr)
        return EXIT_REFUSED
    _confirm(args, verification, env)
    outcome = sign_bundle(
        bundle, anchors, load_seed(home / "keystore.json", _passphrase(args, env)), now_ms, log.history()
    )
    if outcome.signed is None:
        _report(outcome.verification, env, now_ms, with_intent=False)
        print("NOTHING WAS SIGNED", file=env.stderr)
        return EXIT_REFUSED
    output = outcome.signed.to_bytes()
    body = bundle.body
    # Log first: a signature that exists must be in the log, even if writing the file fails.
    log.append(
        EVENT_SIGNED,
        now_ms,
        {
            "bundle_id": body.bundle_id,
            "bundle_sha256": bundle.digest,
            "request": body.request.key,
            "chain": body.chain.value,
            "network": body.network,
            "signer_id": outcome.signed.signer_id,
            "output_sha256": sha256_hex(output),
            "summary": f"{body.intent.amount_minor} {body.intent.asset} to {body.intent.destination}",
        },
    )
    _write_answer(args.out, output)
    print(f"SIGNED {body.bundle_id}: wrote {args.out} (sha256 {sha256_hex(output)})", file=env.stdout)
    return EXIT_OK


def _write_answer(out: Path, output: bytes) -> None:
    """Write ``out`` whole or not at all: a crash mid-write leaves only ``<out>.partial``, never a
    torn answer under the name the operator carries back; an existing ``out`` is never replaced."""
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)  # a previous crash's leftover: never handed out
    try:
        with partial.open("xb") as handle:
            handle.write(output)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(partial, out)  # unlike a rename, refuses to replace an existing file
        except FileExistsError:
            raise
        except OSError:
            # A file system without hard links (a FAT USB stick): rename, once nothing is there.
            if out.exists():
                raise FileExistsError(f"{out} already exists; not overwriting it") from None
            os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    directory = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _resume(
    args: argparse.Namespace, home: Path, env: CliEnvironment, bundle: Bundle, anchors: TrustAnchors,
    log: SigningLog,
) -> int:
    """Re-issue the logged signature of ``bundle`` (the signer died after logging, before the answer).

    Signing is deterministic (RFC 6979 nonces, the signing time taken from the log entry), so
    signing again with the history as it was before that entry gives the same bytes; they are
    written only if their hash is the one logged, so nothing new is ever signed here.
    """
    body = bundle.body
    entries = log.entries()
    earlier = next((e for e in entries if e.event == EVENT_SIGNED and e.details["bundle_id"] == body.bundle_id
                    and e.details["bundle_sha256"] == bundle.digest), None)
    if earlier is None:
        raise SignerError(
            SignerCode.RESUME_NOT_SIGNED,
            f"bundle {body.bundle_id} ({bundle.digest[:16]}...) was never signed by this signer; "
            "--resume only re-issues a logged signature. Nothing was signed",
        )
    before = History.from_entries(entries[: earlier.seq])
    outcome = sign_bundle(bundle, anchors, load_seed(home / "keystore.json", _passphrase(args, env)),
                          earlier.at_ms, before)
    output = outcome.signed.to_bytes() if outcome.signed is not None else b""
    if sha256_hex(output) != earlier.details["output_sha256"]:
        raise SignerError(
            SignerCode.RESUME_MISMATCH,
            f"signing bundle {body.bundle_id} again did not reproduce the output logged in entry "
            f"{earlier.seq}; nothing was written",
        )
    _write_answer(args.out, output)
    print(f"SIGNED {body.bundle_id}: re-issued the signature of log entry {earlier.seq}, wrote {args.out} "
          f"(sha256 {sha256_hex(output)})", file=env.stdout)
    return EXIT_OK


def _check_offline(args: argparse.Namespace, log: SigningLog, env: CliEnvironment) -> None:
    online = online_interfaces(env.interfaces())
    if not online:
        return
    names = ", ".join(i.name for i in online)
    if not args.online_ok:
        raise SignerError(
            SignerCode.MACHINE_ONLINE,
            f"network interfaces are up: {names}. Take them down, or pass --i-know-this-machine-is-online",
        )
    banner = "!" * 72
    print(
        f"{banner}\n!!! SIGNING ON A MACHINE THAT MAY BE ONLINE ({names})\n!!! This is recorded in the "
        f"signing log.\n{banner}",
        file=env.stderr,
    )
    log.append(EVENT_ONLINE_OVERRIDE, env.now_ms(), {"interfaces": names, "command": "sign"})


def _log(args: argparse.Namespace, home: Path, env: CliEnvironment) -> int:
    log = SigningLog(home / "signing-log.jsonl")
    entries = log.entries()
    for entry in entries:
        details = " ".join(f"{k}={v}" for k, v in sorted(entry.details.items()))
        print(f"#{entry.seq} at {entry.at_ms} {entry.event.upper()} {details}", file=env.stdout)
    print(f"{len(entries)} entries, chain intact, head sha256 {log.head_sha256()}", file=env.stdout)
    return EXIT_OK


def _qr_split(args: argparse.Namespace, home: Path, env: CliEnvironment) -> int:
    frames = qr.split(args.file.read_bytes(), args.chunk_bytes)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for number, frame in enumerate(frames, start=1):
        (args.out_dir / f"frame-{number:03d}.txt").write_text(frame + "\n", encoding="ascii")
        if args.png:
            qr.render_png(frame, args.out_dir / f"frame-{number:03d}.png")
        if args.terminal:
            print(f"frame {number}/{len(frames)}", file=env.stdout)
            print(qr.render_terminal(frame), file=env.stdout)
    print(f"wrote {len(frames)} frames to {args.out_dir}", file=env.stdout)
    return EXIT_OK


def _qr_join(args: argparse.Namespace, home: Path, env: CliEnvironment) -> int:
    lines = [
        line for path in args.frames for line in path.read_text(encoding="ascii").splitlines() if line.strip()
    ]
    payload = qr.join(lines)
    args.out.write_bytes(payload)
    print(f"joined {len(lines)} frames into {args.out} (sha256 {sha256_hex(payload)})", file=env.stdout)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

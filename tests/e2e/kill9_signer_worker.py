"""Run `strongroom-signer` and SIGKILL it at a named step of `sign` (kill -9 tests,
tests/e2e/test_kill9_signer.py).

    python kill9_signer_worker.py POINT NOW_MS -- SIGNER ARGS...

Test-only: the real CLI (``signer.cli.main``) on an offline machine (no interface up) whose clock
reads NOW_MS. The steps of `sign`, in order: the bundle file read (``imported``), every check run
(``verified``), the signature made (``signed``), the signing log appended and fsynced (``logged``),
the answer file half written (``answer_torn``), the answer written (``answered``). POINT ``none``
runs the command to its end.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from signer import cli, signing_log
from signer.network import Interface

POINTS = ("imported", "verified", "signed", "logged", "answer_torn", "answered", "none")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _after(owner: Any, name: str) -> None:
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        _die()
        return result

    setattr(owner, name, wrapped)


def _torn_answer() -> None:
    """The answer's bytes reach the disk half written (a crash inside the write)."""
    import io

    real_open = Path.open

    def open_(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(self, mode, *args, **kwargs)
        writing = "w" in mode or "x" in mode
        if not writing or self.suffix == ".lock" or "signing-log" in self.name:
            return handle
        raw: io.BufferedWriter = handle

        class Torn:
            def __enter__(self) -> Torn:
                return self

            def __exit__(self, *exc: object) -> None:
                raw.close()

            def write(self, data: bytes) -> int:
                raw.write(data[: len(data) // 2])
                raw.flush()
                os.fsync(raw.fileno())
                _die()
                return 0

            def fileno(self) -> int:
                return raw.fileno()

            def flush(self) -> None:
                raw.flush()

            def close(self) -> None:
                raw.close()

        return Torn()

    Path.open = open_  # type: ignore[assignment, method-assign]


def install(point: str) -> None:
    assert point in POINTS, f"POINT was {point!r}, expected one of {POINTS}"
    if point == "imported":
        _after(cli, "_load")
    elif point == "verified":
        _after(cli, "verify_bundle")
    elif point == "signed":
        _after(cli, "sign_bundle")
    elif point == "logged":
        _after(signing_log.SigningLog, "append")
    elif point == "answer_torn":
        _torn_answer()
    elif point == "answered":
        import builtins

        original = builtins.print

        def printed(*args: Any, **kwargs: Any) -> None:
            if args and str(args[0]).startswith("SIGNED "):
                _die()
            original(*args, **kwargs)

        cli.print = printed  # type: ignore[attr-defined]


def main() -> int:
    point, now_ms, dash, *argv = sys.argv[1:]
    assert dash == "--"
    install(point)
    env = cli.CliEnvironment(now_ms=lambda: int(now_ms), interfaces=lambda: [Interface("lo", True, True)])
    return cli.main(argv, env)


if __name__ == "__main__":
    sys.exit(main())

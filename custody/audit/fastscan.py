"""The verifier's optional compiled fast path over entries.jsonl: build and load (no database).

``_fastscan.c`` hashes, parses and replays the common canonical transfer
entries in C and hands every other line (anything it cannot check, or that
fails a check) back to the pure verifier in custody/audit/verify.py, which
stays the reference and the fallback. Build it with::

    python -m custody.audit.fastscan build      # custody/audit/_fastscan.<abi>.so

It needs a C compiler, the Python headers and OpenSSL's libcrypto headers.
The build records the SHA-256 of the C source; :func:`load` uses the module
only if it was built from the current source, and never when
``STRONGROOM_AUDIT_PURE=1``.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).with_name("_fastscan.c")
MODULE_NAME = "custody.audit._fastscan"
PURE_ENV = "STRONGROOM_AUDIT_PURE"


def source_sha256() -> str:
    """Return the SHA-256 of the C source (recorded in every build)."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def extension_path(directory: Path | None = None) -> Path:
    """Return where the built extension lives (next to the source unless ``directory``)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return (directory or SOURCE.parent) / f"_fastscan{suffix}"


def build(directory: Path | None = None) -> Path:
    """Compile the extension into ``directory`` (default: next to the source); return its path."""
    target = extension_path(directory)
    include = sysconfig.get_paths()["include"]
    compiler = os.environ.get("CC", "gcc")
    with tempfile.TemporaryDirectory(prefix="strongroom-fastscan-") as work:
        built = Path(work) / target.name
        command = [compiler, "-O2", "-fPIC", "-shared", "-fno-strict-aliasing", "-DNDEBUG",
                   "-Wall", "-Wno-deprecated-declarations",
                   f'-DFASTSCAN_SOURCE_SHA256="{source_sha256()}"', f"-I{include}",
                   str(SOURCE), "-o", str(built), "-lcrypto"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise RuntimeError(f"building {SOURCE.name} failed:\n{result.stderr}")
        target.parent.mkdir(parents=True, exist_ok=True)
        # A new inode renamed over the old one: a process with the old build
        # mapped keeps running it (copying over it in place would crash it).
        staged = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copyfile(built, staged)
        os.replace(staged, target)
    return target


def load_from(path: Path) -> ModuleType:
    """Import the extension at ``path``; raise ImportError if it is not built from the current source."""
    loader = importlib.machinery.ExtensionFileLoader(MODULE_NAME, str(path))
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path, loader=loader)
    if spec is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    if getattr(module, "SOURCE_SHA256", None) != source_sha256():
        raise ImportError(f"{path} was built from another version of {SOURCE.name}: rebuild it")
    return module


def load() -> ModuleType | None:
    """Return the built extension, or None (pure verifier) if it is absent, stale or disabled."""
    if os.environ.get(PURE_ENV) == "1":
        return None
    path = extension_path()
    if not path.exists():
        return None
    try:
        return load_from(path)
    except ImportError:
        return None


def main(argv: list[str] | None = None) -> int:
    """``python -m custody.audit.fastscan build|clean``."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["build"]:
        print(f"built {build()}")
        return 0
    if args == ["clean"]:
        extension_path().unlink(missing_ok=True)
        return 0
    print("usage: python -m custody.audit.fastscan build|clean", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

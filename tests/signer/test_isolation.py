"""The signer runs with only its own dependencies.

A fresh virtualenv (no pip, no system site-packages) gets symlinks to
exactly the distributions in the dependency closure of embit, eth-account,
cryptography, qrcode and pypng, taken from the current environment, plus the
`signer` and `policies` packages. Nothing is downloaded, so this works
offline and takes a few seconds; the interpreter runs with -I so neither the
repository nor PYTHONPATH is on sys.path. Flask, SQLAlchemy, web3, custody and
the rest are then simply not importable: if signer needed them, it would fail.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from .helpers import NOW_MS, PASSPHRASE, World

REPO = Path(__file__).resolve().parents[2]
SIGNER_DEPENDENCIES = ("embit", "eth-account", "cryptography", "qrcode", "pypng")
FORBIDDEN = ("flask", "sqlalchemy", "alembic", "custody", "exchange", "strongroom", "hvac", "web3", "psycopg")


def _closure(roots: tuple[str, ...]) -> dict[str, metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    pending = list(roots)
    while pending:
        name = pending.pop().lower().replace("_", "-")
        if name in found:
            continue
        dist = metadata.distribution(name)
        found[name] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return found


def _link_distribution(dist: metadata.Distribution, site: Path) -> None:
    top_level = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first not in ("..", "__pycache__"):
            top_level.add(first)
    for name in top_level:
        source = Path(str(dist.locate_file(name)))
        if source.exists() and not (site / name).exists():
            (site / name).symlink_to(source)


def _fresh_venv(root: Path) -> Path:
    venv.EnvBuilder(with_pip=False, system_site_packages=False, symlinks=True).create(root)
    [site] = list((root / "lib").glob("python3*/site-packages"))
    for dist in _closure(SIGNER_DEPENDENCIES).values():
        _link_distribution(dist, site)
    for package in ("signer", "policies"):
        (site / package).symlink_to(REPO / package)
    return root / "bin" / "python"


SCRIPT = """
import importlib, pkgutil, sys
import signer
from signer.cli import CliEnvironment, main
for module in pkgutil.iter_modules(signer.__path__):
    importlib.import_module("signer." + module.name)
for name in {forbidden!r}:
    assert name not in sys.modules, name + " was imported"
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    else:
        raise SystemExit(name + " is importable in the signer-only environment")
env = CliEnvironment(now_ms=lambda: {now_ms}, interfaces=lambda: [], min_init_scrypt_log2_n=10)
home = sys.argv[1]
assert main(["--home", home, "verify", home + "/bundle.json"], env) == 0
assert main(["--home", home, "sign", home + "/bundle.json", "--out", home + "/signed.json", "--yes",
             "--passphrase-file", home + "/passphrase.txt"], env) == 0
qr_args = ["qr", "split", home + "/signed.json", "--out-dir", home + "/qr", "--png"]
assert main(["--home", home, *qr_args], env) == 0
print("signer-only environment OK")
"""


def test_signer_imports_and_signs_with_only_its_own_dependencies(tmp_path: Path) -> None:
    python = _fresh_venv(tmp_path / "venv")
    world = World()
    home = world.write_home(tmp_path / "home")
    (home / "bundle.json").write_bytes(world.btc_bundle().to_bytes())
    assert (home / "passphrase.txt").read_text().strip() == PASSPHRASE
    script = SCRIPT.format(forbidden=FORBIDDEN, now_ms=NOW_MS)
    result = subprocess.run(
        [str(python), "-I", "-c", script, str(home)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signer-only environment OK" in result.stdout
    assert (home / "signed.json").exists()
    assert sys.prefix != str(tmp_path / "venv")

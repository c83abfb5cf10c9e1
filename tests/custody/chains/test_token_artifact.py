"""The committed ERC-20 artifact is exactly what solcjs compiles from the committed source."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from custody.chains.ethereum.token import ARTIFACT_PATH, TRANSFER_SELECTOR, artifact

REPO = Path(__file__).resolve().parents[3]


def test_token_artifact_recompiles_to_identical_bytecode() -> None:
    node = shutil.which("node")
    if node is None or not (REPO / "node_modules" / "solc").exists():
        if os.environ.get("STRONGROOM_REQUIRE_ANVIL") == "1":
            pytest.fail("solcjs not installed: run scripts/install-node-deps.sh")
        pytest.skip("solcjs not installed: run scripts/install-node-deps.sh")
    out = subprocess.run([node, str(REPO / "contracts" / "compile.js"), "--print"], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    fresh = json.loads(out)
    committed = json.loads(ARTIFACT_PATH.read_text())
    assert fresh["bytecode"] == committed["bytecode"]
    assert fresh["deployedBytecode"] == committed["deployedBytecode"]
    assert fresh["abi"] == committed["abi"]


def test_token_abi_has_erc20_transfer_with_six_decimals_constant() -> None:
    names = {item.get("name") for item in artifact()["abi"]}
    assert {"transfer", "balanceOf", "decimals", "Transfer", "mint"} <= names
    assert TRANSFER_SELECTOR.hex() == "a9059cbb"

"""Start the devnet: the Ethereum node and the Bitcoin regtest server, and describe them for others."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from strongroom.devnet.bitcoin import BitcoinDevnetServer, JournaledRegtest
from strongroom.devnet.control import DevnetInfo
from strongroom.devnet.ethereum import AnvilNode, anvil_binary, ensure_token

DEFAULT_HOST = "127.0.0.1"
DEFAULT_ETH_PORT = 8545
DEFAULT_BTC_PORT = 18443
DIR_MODE = 0o700


@dataclass
class Devnet:
    """The running chains; :meth:`close` stops them (state stays in ``directory``)."""

    directory: Path
    info: DevnetInfo
    anvil: AnvilNode | None
    facade: object | None
    bitcoin: BitcoinDevnetServer

    def close(self) -> None:
        self.bitcoin.close()
        if self.anvil is not None:
            self.anvil.close()
        if self.facade is not None:
            self.facade.close()  # type: ignore[attr-defined]
        (self.directory / "devnet.json").unlink(missing_ok=True)


def devnet_dir(data_dir: Path) -> Path:
    return data_dir / "devnet"


def start(data_dir: Path, host: str = DEFAULT_HOST, eth_port: int = DEFAULT_ETH_PORT,
          btc_port: int = DEFAULT_BTC_PORT, use_anvil: bool = True) -> Devnet:
    """Start both chains with their state in ``data_dir/devnet``; write devnet.json and devnet.env."""
    directory = devnet_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    known_token = _known_token(directory)
    binary = anvil_binary() if use_anvil else None
    anvil = facade = None
    if binary is not None:
        anvil = AnvilNode(binary, directory, host, eth_port)
        control, eth_url, kind = anvil.control(), anvil.url, "anvil"
    else:
        from strongroom.devnet.facade import EthereumFacade

        facade = EthereumFacade(host, eth_port)
        facade.start()
        control, eth_url, kind = facade.control(), facade.url, "facade"
    try:
        token = ensure_token(control, known_token)
        password = _password(directory)
        node = JournaledRegtest(directory)
        server = BitcoinDevnetServer(node, "devnet", password, host, btc_port)
        server.start()
    except BaseException:
        if anvil is not None:
            anvil.close()
        if facade is not None:
            facade.close()
        raise
    info = DevnetInfo(eth_url, kind, token, server.url, "devnet", password)
    info.write(directory)
    (directory / "token.txt").write_text(token + "\n")
    return Devnet(directory, info, anvil, facade, server)


def _known_token(directory: Path) -> str | None:
    path = directory / "token.txt"
    return path.read_text().strip() if path.exists() else None


def _password(directory: Path) -> str:
    """Return the devnet's Bitcoin RPC password, created once (owner-only file)."""
    path = directory / "rpc-password"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(16))
    return path.read_text().strip()

"""``strongroom devnet ...``: local chains for operators and the demo (docs/devnet.md)."""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

import click

from strongroom.settings import Settings

CHAIN_CHOICES = ("ethereum", "bitcoin", "all")


def _fail(message: str) -> None:
    click.echo(json.dumps({"code": 4490, "error": "devnet_refused", "message": message}), err=True)
    raise SystemExit(1)


def _info() -> Any:
    from strongroom.devnet.control import DevnetError, DevnetInfo
    from strongroom.devnet.runner import devnet_dir

    try:
        return DevnetInfo.read(devnet_dir(Settings.from_env().data_dir))
    except DevnetError as exc:
        _fail(str(exc))


def register(main: click.Group) -> None:
    """Add the ``devnet`` command group to ``main``."""

    @main.group("devnet")
    def devnet() -> None:
        """Local Ethereum and Bitcoin chains for operators (state in the data dir)."""

    @devnet.command("up")
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--eth-port", type=click.IntRange(1, 65535), default=8545, show_default=True)
    @click.option("--btc-port", type=click.IntRange(1, 65535), default=18443, show_default=True)
    @click.option("--no-anvil", is_flag=True, help="Use the in-process chain behind a JSON-RPC facade.")
    def up(host: str, eth_port: int, btc_port: int, no_anvil: bool) -> None:
        """Run both chains until interrupted; print the environment for the platform."""
        from strongroom.devnet.runner import start

        settings = Settings.from_env()
        settings.ensure_data_dir()
        net = start(settings.data_dir, host, eth_port, btc_port, use_anvil=not no_anvil)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        click.echo(f"devnet up ({net.info.eth_kind}); environment in {net.directory / 'devnet.env'}:")
        for key, value in net.info.environment().items():
            click.echo(f"export {key}={value}")
        try:
            while not stop.wait(0.5):
                pass
        finally:
            net.close()
            click.echo("devnet stopped; state kept in " + str(net.directory))

    @devnet.command("env")
    def env() -> None:
        """Print the platform's environment for the running devnet (eval it in a shell)."""
        for key, value in _info().environment().items():
            click.echo(f"export {key}={value}")

    @devnet.command("status")
    def status() -> None:
        """Print each chain's height."""
        from strongroom.devnet.control import BitcoinControl, EthereumControl

        info = _info()
        click.echo(json.dumps({"ethereum": {"kind": info.eth_kind, "height": EthereumControl(info).height()},
                               "bitcoin": {"height": BitcoinControl(info).height()}}))

    chain_option = click.option("--chain", type=click.Choice(CHAIN_CHOICES), default="all", show_default=True)

    @devnet.command("mine")
    @click.argument("count", type=click.IntRange(1, 1000))
    @chain_option
    def mine(count: int, chain: str) -> None:
        """Mine COUNT blocks on each chain (or one)."""
        from strongroom.devnet.control import BitcoinControl, DevnetError, EthereumControl

        info, heights = _info(), {}
        try:
            if chain in ("ethereum", "all"):
                heights["ethereum"] = EthereumControl(info).mine(count)
            if chain in ("bitcoin", "all"):
                heights["bitcoin"] = BitcoinControl(info).mine(count)
        except DevnetError as exc:
            _fail(str(exc))
        click.echo(json.dumps({"mined": count, "heights": heights}))

    @devnet.command("fund")
    @click.argument("address")
    @click.argument("amount")
    @click.option("--asset", type=click.Choice(("ETH", "USDC", "BTC")), default=None,
                  help="Default: ETH for a 0x address, else BTC.")
    def fund(address: str, amount: str, asset: str | None) -> None:
        """Pay AMOUNT (whole units, e.g. 1.5) to ADDRESS from the faucet, in a new block."""
        from strongroom.devnet.control import BitcoinControl, DevnetError, EthereumControl, minor_units

        asset = asset or ("ETH" if address.startswith("0x") else "BTC")
        info = _info()
        try:
            minor = minor_units(amount, asset)
            txid = (BitcoinControl(info).fund(address, minor) if asset == "BTC"
                    else EthereumControl(info).fund(address, asset, minor))
        except DevnetError as exc:
            _fail(str(exc))
        click.echo(json.dumps({"txid": txid, "asset": asset, "amount_minor": str(minor), "address": address}))

    @devnet.command("reorg")
    @click.argument("depth", type=click.IntRange(1, 100))
    @chain_option
    @click.option("--keep-transactions", is_flag=True,
                  help="Bitcoin: return the replaced blocks' transactions to the mempool (default: drop).")
    def reorg(depth: int, chain: str, keep_transactions: bool) -> None:
        """Replace the top DEPTH blocks (their transactions are dropped, as a double-spend would)."""
        from strongroom.devnet.control import BitcoinControl, DevnetError, EthereumControl

        info, heights = _info(), {}
        try:
            if chain in ("ethereum", "all"):
                heights["ethereum"] = EthereumControl(info).reorg(depth)
            if chain in ("bitcoin", "all"):
                heights["bitcoin"] = BitcoinControl(info).reorg(depth, drop=not keep_transactions)
        except DevnetError as exc:
            _fail(str(exc))
        click.echo(json.dumps({"reorg_depth": depth, "heights": heights}))

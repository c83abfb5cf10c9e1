"""The online check reads interface state from /sys/class/net (a fake tree here)."""

from __future__ import annotations

from pathlib import Path

from signer.network import Interface, online_interfaces, read_interfaces


def _iface(root: Path, name: str, flags: str, operstate: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "flags").write_text(flags + "\n")
    (root / name / "operstate").write_text(operstate + "\n")


def test_read_interfaces_classifies_loopback_up_and_down(tmp_path: Path) -> None:
    _iface(tmp_path, "lo", "0x9", "unknown")
    _iface(tmp_path, "eth0", "0x1003", "up")
    _iface(tmp_path, "wlan0", "0x1002", "down")
    _iface(tmp_path, "tun0", "0x1091", "unknown")  # VPN tunnels report "unknown" while up.
    interfaces = read_interfaces(tmp_path)
    assert [i.name for i in online_interfaces(interfaces)] == ["eth0", "tun0"]
    assert Interface("lo", True, True) in interfaces


def test_unreadable_flags_count_as_up(tmp_path: Path) -> None:
    (tmp_path / "eth9").mkdir()
    assert [i.name for i in online_interfaces(read_interfaces(tmp_path))] == ["eth9"]


def test_only_loopback_is_offline(tmp_path: Path) -> None:
    _iface(tmp_path, "lo", "0x9", "unknown")
    assert online_interfaces(read_interfaces(tmp_path)) == []


def test_real_machine_reader_runs() -> None:
    assert isinstance(read_interfaces(), list)

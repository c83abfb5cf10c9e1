"""Settings from environment variables, with safe embedded defaults (docs/configuration.md)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8600
DATA_DIR_MODE = 0o700
KEYSTORE_BACKENDS = ("local", "vault", "pkcs11")
DEFAULT_CHECKPOINT_EVERY = 10_000
# Reverse proxies in front of the app whose X-Forwarded-For / -Proto entries are believed (0: none).
MAX_TRUSTED_PROXY_HOPS = 5
EXCHANGE_FEEDS = ("simulated", "ccxt", "none")
# A host name or an IPv4/IPv6 address; anything else is a typo, not an address to resolve.
HOST_PATTERN = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*|"
                          r"[0-9A-Fa-f:.]{2,45})$")


class SettingsError(ValueError):
    """A setting from the environment was invalid."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the composition root needs to wire the platform."""

    data_dir: Path
    database_url: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    log_level: str = "INFO"
    keystore_backend: str = "local"
    keystore_passphrase: str | None = field(default=None, repr=False)
    keystore_passphrase_file: Path | None = None
    checkpoint_every_entries: int = DEFAULT_CHECKPOINT_EVERY
    # The exchange market (docs/market.md): where index prices come from, the simulated feed's
    # seed, hand-set prices allowed (dev/demo only), and the demo market maker.
    exchange_feed: str = "simulated"
    exchange_feed_seed: int = 1
    exchange_dev_mode: bool = False
    exchange_demo_maker: bool = False
    # Scale-out order entry (docs/scale-out.md): NATS servers of the engines' command streams;
    # empty means the in-process engine (the embedded default).
    exchange_nats_urls: tuple[str, ...] = ()
    # Shard mode (docs/scale-out.md, "Clearing shards"): NATS servers of the clearing shards'
    # command streams; every exchange endpoint then runs through the shards.
    exchange_shard_nats_urls: tuple[str, ...] = ()
    # NAME=instrument-file,... : each shard's instruments, as its worker loads them ("" = MAIN).
    exchange_shards: str = ""
    # How many reverse proxies (ingress, TLS terminator) sit in front of the app: the client address
    # is then the one the outermost of them saw (the Nth X-Forwarded-For entry from the right).
    # 0 (the default): X-Forwarded-* headers are never believed (docs/production.md, "TLS").
    trusted_proxy_hops: int = 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read ``STRONGROOM_*`` variables; unset ones take the embedded defaults."""
        env = dict(os.environ if environ is None else environ)
        data_dir = Path(env.get("STRONGROOM_DATA_DIR") or _default_data_dir(env)).expanduser()
        database_url = env.get("STRONGROOM_DATABASE_URL") or f"sqlite:///{data_dir / 'strongroom.db'}"
        port_text = env.get("STRONGROOM_PORT", str(DEFAULT_PORT))
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise SettingsError(f"STRONGROOM_PORT was {port_text!r}, must be 1..65535")
        log_level = env.get("STRONGROOM_LOG_LEVEL", "INFO").upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"STRONGROOM_LOG_LEVEL was {log_level!r}, must be DEBUG, INFO, "
                                "WARNING or ERROR")
        backend = env.get("STRONGROOM_KEYSTORE_BACKEND", "local")
        if backend not in KEYSTORE_BACKENDS:
            raise SettingsError(f"STRONGROOM_KEYSTORE_BACKEND was {backend!r}, must be one of "
                                f"{', '.join(KEYSTORE_BACKENDS)}")
        every_text = env.get("STRONGROOM_CHECKPOINT_EVERY", str(DEFAULT_CHECKPOINT_EVERY))
        if not every_text.isdigit() or int(every_text) < 1:
            raise SettingsError(f"STRONGROOM_CHECKPOINT_EVERY was {every_text!r}, must be a positive integer")
        passphrase_file = env.get("STRONGROOM_KEYSTORE_PASSPHRASE_FILE")
        feed = env.get("STRONGROOM_EXCHANGE_FEED", "simulated")
        if feed not in EXCHANGE_FEEDS:
            raise SettingsError(f"STRONGROOM_EXCHANGE_FEED was {feed!r}, "
                                f"must be one of {', '.join(EXCHANGE_FEEDS)}")
        seed_text = env.get("STRONGROOM_EXCHANGE_FEED_SEED", "1")
        if not seed_text.isdigit():
            raise SettingsError(f"STRONGROOM_EXCHANGE_FEED_SEED was {seed_text!r}, "
                                "must be a non-negative integer")
        hops_text = env.get("STRONGROOM_TRUSTED_PROXY_HOPS", "0").strip() or "0"
        if not hops_text.isdigit() or int(hops_text) > MAX_TRUSTED_PROXY_HOPS:
            raise SettingsError(f"STRONGROOM_TRUSTED_PROXY_HOPS was {hops_text[:20]!r}, "
                                f"must be 0..{MAX_TRUSTED_PROXY_HOPS}")
        host = env.get("STRONGROOM_HOST") or DEFAULT_HOST
        if len(host) > 253 or not HOST_PATTERN.fullmatch(host):
            raise SettingsError(f"STRONGROOM_HOST was {host[:80]!r}, must be a host name or an IP address")
        return cls(data_dir=data_dir, database_url=database_url,
                   host=host, port=int(port_text),
                   log_level=log_level, keystore_backend=backend,
                   keystore_passphrase=env.get("STRONGROOM_KEYSTORE_PASSPHRASE") or None,
                   keystore_passphrase_file=Path(passphrase_file) if passphrase_file else None,
                   checkpoint_every_entries=int(every_text), exchange_feed=feed,
                   exchange_feed_seed=int(seed_text),
                   exchange_dev_mode=_flag(env, "STRONGROOM_EXCHANGE_DEV_MODE"),
                   exchange_demo_maker=_flag(env, "STRONGROOM_EXCHANGE_DEMO_MAKER"),
                   exchange_nats_urls=tuple(u.strip() for u in env.get(
                       "STRONGROOM_EXCHANGE_NATS_URLS", "").split(",") if u.strip()),
                   exchange_shard_nats_urls=tuple(u.strip() for u in env.get(
                       "STRONGROOM_EXCHANGE_SHARD_NATS_URLS", "").split(",") if u.strip()),
                   exchange_shards=env.get("STRONGROOM_EXCHANGE_SHARDS", "").strip(),
                   trusted_proxy_hops=int(hops_text))

    def ensure_data_dir(self) -> Path:
        """Create the data directory readable by its owner only, and return it."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=DATA_DIR_MODE)
        os.chmod(self.data_dir, DATA_DIR_MODE)
        return self.data_dir


def _default_data_dir(env: dict[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "strongroom"


def _flag(env: dict[str, str], name: str) -> bool:
    value = env.get(name, "0").strip().lower()
    if value not in ("0", "1", "true", "false", "yes", "no", ""):
        raise SettingsError(f"{name} was {value!r}, must be 0 or 1")
    return value in ("1", "true", "yes")

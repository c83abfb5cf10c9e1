"""Clearing shard snapshots in the JetStream object store `SHARD_SNAPSHOT` (object `<NAME>`).

A venue's state can exceed one NATS message (1 MiB), so a snapshot is an
object in the standard JetStream object store layout (`nats object get
SHARD_SNAPSHOT MAIN` reads it): chunks of 128 KiB on `$O.SHARD_SNAPSHOT.C.<id>`
plus a meta record on `$O.SHARD_SNAPSHOT.M.<name>` with their count, size and
SHA-256 digest.

Writing stores the chunks under a fresh id, then replaces the meta record
(a rollup), then purges the previous chunks, so a writer that dies midway
leaves the previous snapshot readable. It does not use nats-py's `put`: when
the meta publish times out (a NATS node lost), `put` purges the new chunks,
but the meta record may have been stored after all, and would then name
purged chunks. Here the chunks stay (at worst an orphan, never a dangling
meta record).

Reading does not use nats-py's `get` either (an ordered push consumer that
waits forever if the chunks vanish): it fetches the chunks one by one with
direct stream reads (next message on the chunk subject), checks count, size
and digest, and retries from the meta record if a concurrent writer replaced
the object under it (a deposed leader may still be writing its last
snapshot). The bytes are the machine's own snapshot
(exchange/stream/shard/machine.py), which re-checks its state hash when
restored.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime

from nats.errors import Error as NatsError
from nats.js.api import ObjectInfo, ObjectMetaOptions
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from exchange.stream.topology import SHARD_SNAPSHOT_BUCKET, check_shard, shard_snapshot_store

log = logging.getLogger("strongroom.shard_snapshots")

OBJECT_STREAM = f"OBJ_{SHARD_SNAPSHOT_BUCKET}"
DIGEST_PREFIX = "SHA-256="
CHUNK_BYTES = 128 * 1024
READ_ATTEMPTS = 5
READ_RETRY_S = 0.2
# A venue snapshot is large but bounded: refuse to assemble anything absurd (a corrupt meta).
SNAPSHOT_MAX_BYTES = 1 << 30


class SnapshotUnreadable(Exception):
    """The stored snapshot does not match its meta record (size, chunks or digest)."""


async def write_snapshot(js: JetStreamContext, shard: str, data: bytes,
                         store: ObjectStore | None = None) -> None:
    """Store `data` as the snapshot of `shard`, replacing the previous one."""
    store = store or await shard_snapshot_store(js)
    name = check_shard(shard)
    try:
        previous: ObjectInfo | None = await store.get_info(name)
    except ObjectNotFoundError:
        previous = None
    nuid = uuid.uuid4().hex
    chunk_subject = f"$O.{SHARD_SNAPSHOT_BUCKET}.C.{nuid}"
    chunks = 0
    try:
        for start in range(0, len(data), CHUNK_BYTES):
            await js.publish(chunk_subject, data[start:start + CHUNK_BYTES], stream=OBJECT_STREAM)
            chunks += 1
    except BaseException:
        with contextlib.suppress(NatsError, TimeoutError):  # nothing names these chunks yet
            await js.purge_stream(OBJECT_STREAM, subject=chunk_subject)
        raise
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    info = ObjectInfo(name=name, bucket=SHARD_SNAPSHOT_BUCKET, nuid=nuid, size=len(data),
                      chunks=chunks, digest=DIGEST_PREFIX + digest,
                      mtime=datetime.now(UTC).isoformat(),
                      options=ObjectMetaOptions(max_chunk_size=CHUNK_BYTES))
    meta_subject = f"$O.{SHARD_SNAPSHOT_BUCKET}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
    # If this times out the meta record may be stored anyway: keep the chunks it names.
    await js.publish(meta_subject, json.dumps(info.as_dict()).encode(), stream=OBJECT_STREAM,
                     headers={"Nats-Rollup": "sub"})
    if previous is not None and previous.nuid and previous.nuid != nuid:
        try:
            await js.purge_stream(OBJECT_STREAM,
                                  subject=f"$O.{SHARD_SNAPSHOT_BUCKET}.C.{previous.nuid}")
        except (NatsError, TimeoutError) as exc:  # an orphan, not an error of this snapshot
            log.warning("old chunks of the %s snapshot not purged: %s", name, type(exc).__name__)


async def read_snapshot(js: JetStreamContext, shard: str,
                        store: ObjectStore | None = None) -> bytes | None:
    """Return the stored snapshot of `shard` (None: none stored yet).

    Raise SnapshotUnreadable if it stays inconsistent with its meta record over
    READ_ATTEMPTS reads; nats' errors if NATS cannot be read now.
    """
    store = store or await shard_snapshot_store(js)
    problem = ""
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            info = await store.get_info(check_shard(shard))
        except ObjectNotFoundError:
            return None
        try:
            return await _read_chunks(js, info.nuid, info.chunks or 0, info.size or 0,
                                      info.digest or "")
        except NotFoundError:
            problem = "a chunk is missing (replaced while read?)"
        except SnapshotUnreadable as exc:
            problem = str(exc)
        log.warning("snapshot of %s unreadable (attempt %d): %s", shard, attempt, problem)
        await asyncio.sleep(READ_RETRY_S)
    raise SnapshotUnreadable(f"snapshot of {shard}: {problem}")


async def _read_chunks(js: JetStreamContext, nuid: str, chunks: int, size: int,
                       digest: str) -> bytes:
    if not 0 <= size <= SNAPSHOT_MAX_BYTES:
        raise SnapshotUnreadable(f"size was {size}, must be 0..{SNAPSHOT_MAX_BYTES}")
    subject = f"$O.{SHARD_SNAPSHOT_BUCKET}.C.{nuid}"
    parts: list[bytes] = []
    seq = 1
    for _ in range(chunks):
        msg = await js.get_msg(OBJECT_STREAM, seq=seq, subject=subject, next=True)
        parts.append(msg.data or b"")
        seq = (msg.seq or seq) + 1
    data = b"".join(parts)
    if len(data) != size:
        raise SnapshotUnreadable(f"{len(data)} bytes in {chunks} chunks, meta says {size}")
    if not digest.upper().startswith(DIGEST_PREFIX):
        raise SnapshotUnreadable(f"digest was {digest[:20]!r}, must be SHA-256")
    expected = base64.urlsafe_b64decode(digest[len(DIGEST_PREFIX):])
    if hashlib.sha256(data).digest() != expected:
        raise SnapshotUnreadable("digest does not match the chunks")
    return data


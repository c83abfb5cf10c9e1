"""deploy/nats/nats.conf: each role's NATS user can do its own job and not the others'.

One JetStream server with the deploy config (free port, temp store); each role connects as its
user. A refused publish is seen as the server's permissions-violation error, and the stream it
aimed at is unchanged.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig

from exchange.stream.cluster import NodeStartFailed, _wait_port, free_ports, server_binary
from exchange.stream.shard.snapshots import read_snapshot, write_snapshot
from exchange.stream.topology import ensure_shard_topology, lease_bucket, shard_snapshot_store
from exchange.stream.urls import redact_url, redact_urls

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats.conf"
ROLES = ("gateway", "worker", "settlement", "feeder", "operator", "monitor")
ENV = {f"NATS_{r.upper()}_PASSWORD": f"pw-{r}-secret" for r in ROLES}
DEADLINE_S = 30.0  # only bounds a hang


def test_nats_conf_passes_the_pinned_server_config_test() -> None:
    done = subprocess.run([server_binary(), "-t", "-c", str(CONF)], env=ENV,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr + done.stdout


def test_nats_conf_without_a_password_variable_is_refused() -> None:
    env = {k: v for k, v in ENV.items() if k != "NATS_WORKER_PASSWORD"}
    done = subprocess.run([server_binary(), "-t", "-c", str(CONF)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "NATS_WORKER_PASSWORD" in done.stderr + done.stdout


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    for _attempt in range(5):
        [client] = free_ports(1)
        store = tmp_path_factory.mktemp("natsperm")
        process = subprocess.Popen(
            [server_binary(), "-c", str(CONF), "-js", "-sd", str(store), "-a", "127.0.0.1",
             "-p", str(client)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(client, process, time.monotonic() + DEADLINE_S)
        except NodeStartFailed:
            process.kill()
            process.wait()
            continue
        try:
            yield client
        finally:
            process.terminate()
            process.wait(timeout=DEADLINE_S)
        return
    pytest.fail("nats-server did not start")


class Role:
    def __init__(self, nc: Any, errors: list[str]) -> None:
        self.nc, self.js, self.errors = nc, nc.jetstream(timeout=DEADLINE_S), errors

    async def refused(self, subject: str, data: bytes = b"{}") -> bool:
        """Publish `subject`; True once the server reported it as a permissions violation."""
        await self.nc.publish(subject, data)
        await self.nc.flush(timeout=DEADLINE_S)
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            if any("permissions violation" in e.lower() and f"\"{subject.lower()}\"" in e.lower()
                   for e in self.errors):
                return True
            await asyncio.sleep(0.02)
        return False


async def _connect(port: int, role: str) -> Role:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(f"nats://{role}:{ENV[f'NATS_{role.upper()}_PASSWORD']}@127.0.0.1:{port}",
                            error_cb=on_error, connect_timeout=DEADLINE_S, max_reconnect_attempts=0)
    return Role(nc, errors)


async def _last_seq(op: Role, stream: str) -> int:
    return int((await op.js.stream_info(stream)).state.last_seq)


async def _scenario(port: int) -> dict[str, Any]:
    roles = {r: await _connect(port, r) for r in ROLES}
    try:
        out: dict[str, Any] = {}
        op = roles["operator"]
        # The worker creates its topology as `strongroom shard-worker` does, and does its job.
        worker = roles["worker"]
        await ensure_shard_topology(worker.js, ["MAIN"], replicas=1)
        out["worker_batch"] = (await worker.js.publish("shardevt.MAIN", b"batch")).seq
        lease = await lease_bucket(worker.js, replicas=1)
        out["worker_lease"] = await lease.create("shard.MAIN", b"main-a")
        store = await shard_snapshot_store(worker.js, replicas=1)
        await write_snapshot(worker.js, "MAIN", b"state" * 1000, store)
        out["worker_snapshot"] = await read_snapshot(worker.js, "MAIN", store)
        # The gateway appends, reads its stream back without acks, keeps nonces, hears changes.
        gw = roles["gateway"]
        out["gateway_append"] = (await gw.js.publish("shard.cmd.MAIN", b"order")).seq
        sub = await gw.js.pull_subscribe("shard.cmd.MAIN", stream="SHARD_MAIN", config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30.0))
        out["gateway_read"] = [m.data for m in await sub.fetch(1, timeout=DEADLINE_S)]
        out["gateway_snapshot"] = await read_snapshot(gw.js, "MAIN", await shard_snapshot_store(gw.js, 1))
        nonces = await gw.js.create_key_value(KeyValueConfig(bucket="AUTH_NONCE", history=1, ttl=600))
        out["gateway_nonce"] = await nonces.create("alice.n1", b"1")
        heard: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_changed(msg: Any) -> None:
            if not heard.done():
                heard.set_result(msg.data)

        await gw.nc.subscribe("strongroom.auth.changed", cb=on_changed)
        await gw.nc.publish("strongroom.auth.changed", b"alice")
        out["gateway_heard"] = await asyncio.wait_for(heard, DEADLINE_S)
        # Settlement: its durable consumer on SHARDEVT, acks, void_deposit appends, its lease.
        st = roles["settlement"]
        await st.js.add_consumer("SHARDEVT", ConsumerConfig(
            durable_name="settle-MAIN", filter_subject="shardevt.MAIN", ack_policy=AckPolicy.ALL))
        psub = await st.js.pull_subscribe_bind("settle-MAIN", "SHARDEVT")
        [batch] = await psub.fetch(1, timeout=DEADLINE_S)
        await batch.ack_sync(timeout=DEADLINE_S)
        out["settlement_acked"] = (await st.js.consumer_info("SHARDEVT", "settle-MAIN")).ack_floor.stream_seq
        out["settlement_append"] = (await st.js.publish("shard.cmd.MAIN", b"void_deposit")).seq
        out["settlement_lease"] = await (await lease_bucket(st.js, replicas=1)).create("settle.MAIN", b"s")
        # Feeder: appends ticks, reads its stream's last message, holds its lease.
        fd = roles["feeder"]
        out["feeder_append"] = (await fd.js.publish("shard.cmd.MAIN", b"tick")).seq
        out["feeder_last"] = (await fd.js.get_last_msg("SHARD_MAIN", "shard.cmd.MAIN")).data
        out["feeder_lease"] = await (await lease_bucket(fd.js, replicas=1)).create("feeder.MAIN", b"f")
        # Monitoring reads state.
        out["monitor_info"] = (await roles["monitor"].js.stream_info("SHARD_MAIN")).state.messages
        # Refusals: the stream each forged message aimed at must not move.
        before = {s: await _last_seq(op, s) for s in ("SHARDEVT", "KV_ENGINE_LEASE", "SHARD_MAIN",
                                                      "KV_AUTH_NONCE")}
        refusals = {
            ("gateway", "shardevt.MAIN"), ("gateway", "$KV.ENGINE_LEASE.shard.MAIN"),
            ("gateway", "$JS.API.STREAM.PURGE.KV_AUTH_NONCE"),
            ("gateway", "$JS.API.STREAM.DELETE.SHARD_MAIN"),
            ("gateway", "$JS.API.CONSUMER.DELETE.SHARDEVT.settle-MAIN"),
            ("gateway", "$JS.ACK.SHARDEVT.x.1.1.1.1.0"),
            ("feeder", "shardevt.MAIN"), ("feeder", "$KV.ENGINE_LEASE.shard.MAIN"),
            ("feeder", "$KV.AUTH_NONCE.alice.n2"), ("feeder", "$JS.API.STREAM.PURGE.SHARD_MAIN"),
            ("settlement", "shardevt.MAIN"), ("settlement", "$KV.ENGINE_LEASE.shard.MAIN"),
            ("settlement", "$KV.AUTH_NONCE.alice.n2"),
            ("worker", "shard.cmd.MAIN"), ("worker", "$KV.AUTH_NONCE.alice.n2"),
            ("worker", "$KV.ENGINE_LEASE.feeder.MAIN"), ("worker", "$JS.API.STREAM.DELETE.SHARDEVT"),
            ("monitor", "shard.cmd.MAIN"), ("monitor", "shardevt.MAIN"),
        }
        out["refused"] = {(r, s): await roles[r].refused(s) for r, s in sorted(refusals)}
        out["unchanged"] = before == {s: await _last_seq(op, s) for s in before}
        return out
    finally:
        for role in roles.values():
            await role.nc.close()


def test_nats_roles_each_do_their_job_and_are_refused_the_others(port: int) -> None:
    out = asyncio.run(_scenario(port))
    assert out["worker_batch"] >= 1 and out["worker_lease"] >= 1
    assert out["worker_snapshot"] == b"state" * 1000
    assert out["gateway_append"] >= 1 and out["gateway_read"] == [b"order"]
    assert out["gateway_snapshot"] == b"state" * 1000, "a gateway replica starts from the snapshot"
    assert out["gateway_nonce"] >= 1 and out["gateway_heard"] == b"alice"
    assert out["settlement_acked"] == out["worker_batch"]
    assert out["settlement_append"] > out["gateway_append"] and out["settlement_lease"] >= 1
    assert out["feeder_append"] > out["settlement_append"] and out["feeder_last"] == b"tick"
    assert out["feeder_lease"] >= 1 and out["monitor_info"] == 3
    assert [k for k, refused in out["refused"].items() if not refused] == []
    assert out["unchanged"], "a refused publish reached a stream"


@pytest.mark.parametrize(("url", "shown"), [
    ("nats://worker:s3cret@nats1:4222", "nats://worker:***@nats1:4222"),
    ("nats://nats1:4222", "nats://nats1:4222"),
    ("tls://tok3n@nats1:4222", "tls://***@nats1:4222"),
    ("worker:s3cret@nats1:4222", "nats://worker:***@nats1:4222"),
])
def test_redact_url_hides_the_password_and_keeps_user_and_host(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_urls_redacts_every_url_of_a_comma_list() -> None:
    shown = redact_urls("nats://a:p1@n1:4222, nats://a:p2@n2:4222")
    assert shown == "nats://a:***@n1:4222,nats://a:***@n2:4222" and "p1" not in shown

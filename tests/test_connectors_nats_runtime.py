"""NATS JetStream in and out of a running instance (DESIGN section 9), on a real nats-server with
JetStream and a Kafka broker: a durable pull consumer -> ingest topic -> topology -> egress topic ->
a subject captured by a stream. The sink deduplicates by ``Nats-Msg-Id``: through a SIGKILL of the
instance, every result is stored once."""
from __future__ import annotations

import asyncio
import os
import signal
import uuid

import orjson
import pytest

import runtime_helpers as h
from _server_nats import nats_binary, start_nats

nats = pytest.importorskip("nats")

pytestmark = [pytest.mark.broker, pytest.mark.xdist_group("connectors-nats")]


@pytest.fixture(scope="module")
def nserver(tmp_path_factory):
    if nats_binary() is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    s = start_nats(tmp_path_factory.mktemp("nats-e2e"))
    yield s
    s.kill()


def _js(url: str, fn):
    async def run():
        nc = await nats.connect(url)
        try:
            return await fn(nc.jetstream())
        finally:
            await nc.close()
    return asyncio.run(run())


def _streams(url: str) -> dict:
    n = uuid.uuid4().hex[:8]
    names = {"in_stream": f"IN_{n}", "in": f"in.{n}", "out_stream": f"OUT_{n}", "out": f"out.{n}"}

    async def make(js):
        await js.add_stream(name=names["in_stream"], subjects=[names["in"]])
        await js.add_stream(name=names["out_stream"], subjects=[names["out"] + ".>"])
    _js(url, make)
    return names


def _publish(url: str, subject: str, seqs) -> None:
    async def pub(js):
        for i in seqs:
            await js.publish(subject, orjson.dumps({"user": f"u{i % 3}", "seq": i}), headers={"Nats-Msg-Id": f"in-{i}"})
    _js(url, pub)


def _results(url: str, stream: str) -> list[tuple[str, str, dict]]:
    """(subject, Nats-Msg-Id, value) of every message stored in ``stream``."""
    async def read(js):
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
            m = await js.get_msg(stream, seq)
            out.append((m.subject, (m.headers or {}).get("Nats-Msg-Id"), orjson.loads(m.data)))
        return out
    return _js(url, read)


TOPO = '''
from streamproc import Topology, connectors, serdes
URL = "{url}"
t = Topology("{app}")
s = t.stream(connectors.NatsJetStream(URL, "{sub_in}", stream="{in_stream}", durable="bridge",
                                      key=lambda v: v["user"], dedupe="10m", name="events"),
             key=serdes.String(), value=serdes.Json())
s.to(connectors.NatsJetStream(URL, subject=lambda k, v: "{sub_out}." + k, name="results"),
     key=serdes.String(), value=serdes.Json())
'''


def test_durable_consumer_to_subjects_exactly_once_through_sigkill(tmp_path, kafka, nserver):
    bootstrap = kafka[0]
    names = _streams(nserver.url)
    app = h.unique("nt")
    ref = h.write_topology(tmp_path / "topo.py", TOPO.format(url=nserver.url, app=app, sub_in=names["in"],
                                                             in_stream=names["in_stream"], sub_out=names["out"]))
    state, log = str(tmp_path / "state"), str(tmp_path / "app.log")
    _publish(nserver.url, names["in"], range(1500))
    p = h.app_subprocess(ref, bootstrap, state, log_path=log)
    try:
        h.wait_until(lambda: len(_results(nserver.url, names["out_stream"])) >= 200, 90, interval=0.5,
                     what="results before the kill")
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        _publish(nserver.url, names["in"], range(1500, 2000))
        p = h.app_subprocess(ref, bootstrap, state, log_path=log)
        h.wait_until(lambda: {v["seq"] for _, _, v in _results(nserver.url, names["out_stream"])}
                     >= set(range(2000)), 120, interval=1.0, what="every result after the restart")
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    got = _results(nserver.url, names["out_stream"])
    assert {v["seq"] for _, _, v in got} == set(range(2000))       # nothing lost
    ids = [mid for _, mid, _ in got]
    assert len(ids) == len(set(ids))                               # JetStream kept each id once
    assert all(subj == f"{names['out']}.{v['user']}" for subj, _, v in got)   # routed per record
    assert all(mid.startswith(f"{app}/{app}-results-egress/") for mid in ids)

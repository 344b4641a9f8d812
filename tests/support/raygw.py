"""The gateway over real Ray shard hosts with a fake switch as its media (tests of
engine/cluster/gateway.py): the pieces every such test builds the same way."""

from __future__ import annotations

import pathlib
import uuid
from typing import Any

import trio

from engine.actors.node import route_by_destination
from engine.actors.ports import InMemoryCdrs, InMemoryCti, InMemoryReplies, Ports
from engine.cluster.cluster import Cluster
from engine.cluster.fakeswitch import FakeSwitch, FileChannelSource
from engine.cluster.gateway import Gateway
from engine.cluster.host import HostConfig
from engine.cluster.snapshots import FileSnapshotStore


class SwitchMedia:
    """The gateway's media port: commands to the fake switch (and kept, for assertions)."""

    def __init__(self, switch: FakeSwitch) -> None:
        self.switch = switch
        self.commands: list = []

    def send(self, command) -> None:
        self.commands.append(command)
        self.switch.on_media(command)


def make_cluster(tmp_path: pathlib.Path, prefix: str = "gw") -> Cluster:
    """Two shard hosts (half a CPU each) with a file snapshot store and the gateway's channel file."""
    config = HostConfig(namespace=f"{prefix}{uuid.uuid4().hex[:8]}", store=FileSnapshotStore(tmp_path / "snap"),
                        channel_sources=(FileChannelSource(str(tmp_path / "channels")),),
                        collect_events=True, snapshot_interval_s=0.05)
    return Cluster(shards=2, config=config, host_cpus=0.5).start()


def make_gateway(cluster: Cluster, switch: FakeSwitch, tmp_path: pathlib.Path,
                 routes: dict[str, str]) -> tuple[Gateway, SwitchMedia, InMemoryCti, InMemoryCdrs]:
    """A gateway over ``cluster`` whose media go to ``switch``; CTI events and CDRs kept in memory."""
    media = SwitchMedia(switch)
    cti, cdrs = InMemoryCti(), InMemoryCdrs()
    gw = Gateway(cluster, Ports(media, cti, cdrs, InMemoryReplies()), router=route_by_destination(routes),
                 channel_file=tmp_path / "channels", refresh_s=0.05)
    return gw, media, cti, cdrs


async def until(cond: Any, timeout: float = 20.0) -> None:
    """Poll ``cond`` every 20 ms, failing after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.02)


async def feed_switch(gw: Gateway, switch: FakeSwitch) -> None:
    """Run forever: the switch's events into the gateway, as the ESL links' sink does."""
    while True:
        for ev in switch.tick():
            gw.put(ev)
        await trio.sleep(0.01)

"""What vetting guest sources costs: reading this host's tables over netlink, the policy itself, and
a whole resolution with the neighbour-table source on versus the defaults.

In a netns made here: bridge br0 (192.168.0.2/16, default route), ENTRIES permanent neighbour
entries on it (as many as the kernel keeps by default: gc_thresh3 is 1024), and a domain of 8
vNICs on br0, each of which the table binds to 8 addresses. Only a configuration that names a
guest source pays any of it; one reading of the tables serves every resolution of 2 s.
"""

from __future__ import annotations

import asyncio
import subprocess
import timeit

ENTRIES = 1000
VNICS = 8


def _per_call_us(statement, number: int, repeat: int = 5) -> float:
    return min(timeit.repeat(statement, number=number, repeat=repeat)) / number * 1e6


def _mac(i: int) -> str:
    return f"52:54:00:bb:00:{i:02x}"


def run() -> list[dict]:
    import tomllib

    from pyroute2 import netns

    from rarp_announce.config import parse_config
    from rarp_announce.lab.netns import inside, unique
    from rarp_announce.resolve import host as host_module
    from rarp_announce.resolve.host import HostResolver
    from rarp_announce.resolve.neighbours import neighbour_addresses, read_tables
    from rarp_announce.resolve.trust import vet

    name = unique("btrust")
    netns.create(name)
    try:
        batch = ["link set lo up", "link add br0 type bridge", "link add gp type veth peer name gst",
                 "link set gp master br0 up", "link set gst up", "link set br0 up",
                 "addr add 192.168.0.2/16 dev br0", "route add default via 192.168.0.1 dev br0"]
        for i in range(ENTRIES):
            mac = _mac(i % VNICS) if i < VNICS * 8 else f"02:00:00:00:{i // 256:02x}:{i % 256:02x}"
            batch.append(f"neigh add 192.168.{10 + i // 250}.{1 + i % 250} lladdr {mac} dev br0 nud permanent")
        subprocess.run(["ip", "-n", name, "-batch", "-"], input="\n".join(batch) + "\n", text=True, check=True,
                       capture_output=True, timeout=60)
        nics = "".join(f"<interface type='bridge'><mac address='{_mac(i)}'/><source bridge='br0'/></interface>"
                       for i in range(VNICS))
        xml = f"<domain><name>b</name><devices>{nics}</devices></domain>"
        base = "[ovs]\ndb = \"\"\n"
        defaults = parse_config(tomllib.loads(base))
        guest = parse_config(tomllib.loads(base + '[addresses]\nsources = ["metadata", "arp"]\n'
                                           '[addresses.allow]\nbr0 = ["192.168.0.0/16"]\n'))
        with inside(name):
            tables = asyncio.run(read_tables())
            bridges = {_mac(i): {"br0"} for i in range(VNICS)}
            candidates, _ = neighbour_addresses(tables, bridges)
            assert sum(len(v) for v in candidates.values()) == VNICS * 8
            allowed, refused = vet(candidates, bridges, {}, guest.addresses.allow, tables, {})
            assert sum(len(v) for v in allowed.values()) == VNICS * 8 and refused == []

            def resolve(config) -> None:
                resolution = asyncio.run(HostResolver(lambda: config).resolve(xml))
                assert len(resolution.targets) == VNICS

            read_us = _per_call_us(lambda: asyncio.run(read_tables()), 50)
            vet_us = _per_call_us(lambda: vet(candidates, bridges, {}, guest.addresses.allow, tables, {}), 500)
            off_us = _per_call_us(lambda: resolve(defaults), 200)
            on_us = _per_call_us(lambda: resolve(guest), 50)  # a new resolver each time: tables read each time
            shared = HostResolver(lambda: guest)
            asyncio.run(shared.resolve(xml))
            cached_us = _per_call_us(lambda: asyncio.run(shared.resolve(xml)), 200)
        assert host_module._TABLES_FOR > 0
    finally:
        netns.remove(name)
    note = f"{ENTRIES} neighbour entries, {VNICS} vNICs x 8 addresses"
    return [
        {"name": "read host tables (netlink)", "value": read_us, "unit": "µs", "note": note},
        {"name": "vet 64 guest addresses", "value": vet_us, "unit": "µs", "note": "the policy alone"},
        {"name": "resolve, defaults", "value": off_us, "unit": "µs/domain", "note": "no guest source: nothing read"},
        {"name": "resolve, arp source on", "value": on_us, "unit": "µs/domain", "note": "tables read for this resolution"},
        {"name": "resolve, arp source on, shared tables", "value": cached_us, "unit": "µs/domain",
         "note": "within 2 s of a reading: the daemon's case for a burst and for retries"},
    ]

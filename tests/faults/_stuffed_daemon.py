"""A daemon process whose arrival table holds N arrivals once it is ready (row 14): built and
run exactly as `rarp-announce daemon` does, with the table filled between start() and READY=1.

MODE says what they do when READY=1 is sent:
- settled: every one announced on br0 and done (a busy host's table, quiet);
- in-flight: every one on br0 with its schedule under way, and still under way whatever the
  machine's speed: its second burst is an hour away (the first one, 5 rounds, leaves at once);
- retrying: half in flight as above, half on a bridge that never comes (a retry each 0.5 s).

Usage: python -m tests.faults._stuffed_daemon SOCKET STATE_DIR N MODE
"""

from __future__ import annotations

import asyncio
import sys
import time

from rarp_announce.schedule import Schedule
from rarp_announce.config import Config, DaemonConfig, OvsConfig
from rarp_announce.triggers.daemon.logs import setup_logging
from rarp_announce.triggers.daemon.service import Daemon
from tests.hostlab import FAST, domain_xml


class StuffedDaemon(Daemon):
    count = 0
    mode = "retrying"

    async def start(self) -> None:
        await super().start()
        started = time.monotonic()
        entries = []
        for index in range(self.count):
            uuid = f"{index:08x}-0000-4000-8000-0000000014aa"
            bridge = "brnever" if self.mode == "retrying" and index % 2 else "br0"
            mac = f"52:54:00:14:{index // 256 % 256:02x}:{index % 256:02x}"
            xml = domain_xml(f"s{index}", [(mac, bridge, None, None)], uuid=uuid)
            entries.append(self.table.expect_soon(uuid, f"s{index}", xml=xml, source="event"))
            if index % 500 == 0:
                await asyncio.sleep(0)
        await asyncio.wait([e.preparing for e in entries if e.preparing is not None], timeout=120)
        for entry in entries:
            self.table.arrive(entry.uuid, entry.name, trigger="resumed-migrated")
        if self.mode == "settled":
            await self.announcer.drain()
        else:
            await asyncio.sleep(0.5)  # retries and schedules under way
        print(f"stuffed {len(self.table.entries)} arrivals in {time.monotonic() - started:.1f} s", file=sys.stderr,
              flush=True)

    def request_stop(self) -> None:
        print(f"request_stop at {time.monotonic():.3f}", file=sys.stderr, flush=True)
        super().request_stop()

    async def stop(self) -> None:
        started = time.monotonic()
        print(f"stop() starts at {started:.3f}", file=sys.stderr, flush=True)
        await super().stop()
        print(f"stop() took {time.monotonic() - started:.3f} s", file=sys.stderr, flush=True)


def main() -> None:
    control_socket, state_dir, count, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    setup_logging("text")
    quick = mode == "settled"
    config = Config(
        schedule=Schedule(**FAST) if quick else
        # A schedule that outlasts any test: on a loaded machine, stuffing the table and reaching
        # READY took longer than the 10 s schedule this used to be, so schedules had ended.
        Schedule(initial_ms=50, max_ms=550, rounds=5, step_ms=100, repeat=2, repeat_interval_s=3600.0),
        daemon=DaemonConfig(retry_timeout=300.0, retry_interval=0.5),
        ovs=OvsConfig(db=""),
    )
    StuffedDaemon.count, StuffedDaemon.mode = count, mode
    daemon = StuffedDaemon(config, uri="test:///default", control_socket=control_socket, state_dir=state_dir)
    asyncio.run(daemon.run())
    print(f"asyncio.run returned at {time.monotonic():.3f}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

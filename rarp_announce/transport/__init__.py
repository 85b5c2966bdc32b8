"""Transport: where frames go. One module per sink, all behind `Sink` (base.py), each chosen
by `open_sink` (factory.py).

- wire.py: the network (raw.py for Linux devices, openflow.py for OVS ports)
- pcap.py: a pcap file instead of the network
- dryrun.py: a line per frame on stdout, nothing sent
"""

from rarp_announce.transport.base import Sink
from rarp_announce.transport.factory import open_sink

__all__ = ["Sink", "open_sink"]

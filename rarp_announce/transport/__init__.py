"""Transport: where frames go. One module per sink, all behind `Sink` (base.py).

- wire.py: the network (raw.py for Linux devices, openflow.py for OVS ports)
- pcap.py: a pcap file instead of the network
- dryrun.py: a line per frame on stdout, nothing sent
"""

from rarp_announce.transport.base import Sink

__all__ = ["Sink"]

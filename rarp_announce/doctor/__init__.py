"""`rarp-announce doctor`: what on this host would stop an announcement, checked as an expert would.

One module per group of checks, each a function that returns `Check`s (report.py): the daemon,
the hook and the capabilities (host.py), Linux bridges (bridges.py), firewall rules (firewall.py),
Open vSwitch (ovs.py), FRR's EVPN settings (evpn.py), the address sources (sources.py) and, for
one domain, its targets (targets.py); run.py runs them in order. Nothing here sends a frame or
changes anything: every check only reads (sysfs, netlink, the control socket, read-only libvirt,
and the tools nft, ebtables, ovs-ofctl/ovs-appctl and vtysh, each with a timeout).
"""

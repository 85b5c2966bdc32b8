"""What OVSDB says about a guest's Open vSwitch port: is it wired, and in which VLANs its MAC lives.

Pure logic on a PortInfo (resolve.ovsdb reads one from the database); no I/O here.

Sources a reader can open:
- ovs-vswitchd.conf.db(5), Port table, "VLAN Configuration" (vswitchd/vswitch.xml in the OVS
  sources): the five vlan_mode values, the default mode, and which packets ingress in which VLAN.
- OVS vswitchd/bridge.c, port_configure(): how tag/trunks/vlan_mode become the bundle settings;
  ofproto/ofproto-dpif.c, bundle_set(), and ofproto/ofproto-dpif-xlate.c, input_vid_is_valid()
  and xvlan_input_translate(): what NORMAL does with a frame ingressing the port.
- Neutron's OVS agent and os-vif's isolate_vif: a freshly plugged port is parked in VLAN 4095
  (neutron/plugins/ml2/drivers/openvswitch/agent/common/constants.py DEAD_VLAN_TAG) until the
  agent binds it (ovs_neutron_agent.py, port_dead()).
- OVN's ovn-controller sets Interface external_ids:ovn-installed="true" once the port's flows
  are in (ovn-controller(8), "external_ids:ovn-installed"); it runs on the bridge named by
  Open_vSwitch external_ids:ovn-bridge, default br-int (ovn-controller(8), "ovn-bridge").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEAD_VLAN = 4095
"""Neutron's DEAD_VLAN_TAG (also os-vif's): a port parked here carries no traffic anywhere."""


@dataclass(frozen=True)
class PortInfo:
    """One Interface row of OVSDB with the Port and Bridge it belongs to.

    `ofport` keeps OVSDB's two "not usable" states apart: None while ovs-vswitchd has not
    (yet) written the column, -1 when it tried and failed (the reason is then in `error`).
    VLAN columns are the Port's, as stored: `tag` None when empty, `trunks` sorted.
    """

    bridge: str
    port: str
    interface: str
    ofport: int | None = None
    tag: int | None = None
    trunks: tuple[int, ...] = ()
    vlan_mode: str | None = None
    iface_type: str = ""
    external_ids: Mapping[str, str] = field(default_factory=dict, hash=False)
    options: Mapping[str, str] = field(default_factory=dict, hash=False)
    error: str | None = None
    ovn_bridge: bool = False

    def __post_init__(self) -> None:
        # Frozen means frozen: callers must not be able to mutate the maps through the info.
        object.__setattr__(self, "external_ids", MappingProxyType(dict(self.external_ids)))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "trunks", tuple(sorted(self.trunks)))


def effective_vlan_mode(info: PortInfo) -> str:
    """The vlan_mode ovs-vswitchd applies: the column, or when empty "access" if `tag` is set,
    else "trunk" (ovs-vswitchd.conf.db(5), Port vlan_mode; bridge.c port_configure())."""
    if info.vlan_mode:
        return info.vlan_mode
    return "access" if info.tag is not None else "trunk"


def is_dead_vlan(info: PortInfo) -> bool:
    """Neutron/os-vif's parking: `tag=4095` (the agent's port_dead() sets it), or a trunk port
    that trunks only 4095 (isolate_vif sets vlan_mode=trunk, trunks=[4095]: untagged input is
    in VLAN 0, which that trunk does not carry, so everything the guest sends is dropped)."""
    if info.tag == DEAD_VLAN:
        return True
    return effective_vlan_mode(info) == "trunk" and info.trunks == (DEAD_VLAN,)


def wiring_problem(info: PortInfo) -> str | None:
    """None when a frame injected with in_port = this port reaches the network now; otherwise
    why not, in words an operator understands."""
    where = f"OVS port {info.interface} on bridge {info.bridge}"
    if info.ofport is None:
        return f"{where} has no OpenFlow port number yet (ovs-vswitchd has not added it)"
    if info.ofport == -1:
        # ovs-vswitchd writes -1 and the reason into Interface.error when it cannot open the
        # device (ovs-vswitchd.conf.db(5), Interface ofport and error).
        reason = info.error or "no error recorded"
        return f"ovs-vswitchd could not add {where} (ofport -1): {reason}"
    if info.ofport <= 0:
        return f"{where} has no valid OpenFlow port number (ofport {info.ofport})"
    if is_dead_vlan(info):
        return (
            f"{where} is parked in the dead VLAN {DEAD_VLAN} "
            "(Neutron/os-vif isolate the port until the agent wires it)"
        )
    iface_id = info.external_ids.get("iface-id")
    if info.ovn_bridge and iface_id and info.external_ids.get("ovn-installed") != "true":
        return (
            f"{where} (iface-id {iface_id}) is not ovn-installed yet "
            "(ovn-controller has not put its flows in)"
        )
    return None


def vlan_plan(info: PortInfo) -> list[tuple[int | None, bool]]:
    """The VLANs the guest's MAC lives in on this port, each as (vlan, tagged_in_frame): how the
    guest's own frame enters the port for OVS's NORMAL switching to put it in that VLAN.

    Follows ovs-vswitchd.conf.db(5), Port table, "VLAN Configuration":
    - access: "carries packets on exactly one VLAN specified in the tag column"; a tagged
      packet "is dropped, regardless of whether the VLAN ID in the header is the access port's"
      -> one untagged frame, OVS adds the tag: [(tag, False)].
    - trunk: "a packet that ingresses on a trunk port is in the VLAN specified in its 802.1Q
      header, or VLAN 0 if the packet has no 802.1Q header"; `trunks` "if it is empty, then
      the port trunks all VLANs" -> empty trunks: the guest's untagged traffic, VLAN 0,
      [(None, False)]; otherwise one tagged frame per trunked VLAN.
    - native-tagged / native-untagged: like trunk, "with the exception that a packet without
      an 802.1Q header that ingresses ... is in the native VLAN (specified in the tag column)",
      which the port "always trunks ... regardless of whether trunks includes that VLAN" ->
      [(tag, False)] then a tagged frame for each other trunked VLAN. (The two modes differ
      only on egress, which does not matter for a frame the guest sends.)
    - dot1q-tunnel: "carries packets on the single VLAN specified in the tag column", which
      "does not appear in an 802.1Q header for packets that ingress" -> [(tag, False)].
    - vlan_mode empty: "If tag contains a value, the port is an access port", else trunk.

    VLAN 0 is OVS's "no VLAN" (the man page: "A packet that appears to have no VLAN is part of
    VLAN 0"), so it is returned as None, untagged: a trunk listing 0, or a tag of 0. Likewise
    an empty `tag` where a mode needs one is VLAN 0 (ofproto-dpif.c bundle_set(): "vlan = ...
    s->vlan >= 0 && s->vlan <= 4095 ? s->vlan : 0"). With a tag, OVS never trunks VLAN 0 on a
    native port (bundle_set(): "prohibit trunking VLAN 0").

    The plan for a parked port (see wiring_problem) is what its columns say, VLAN 4095 included:
    ask wiring_problem first.
    """
    mode = effective_vlan_mode(info)
    tag = info.tag or None  # VLAN 0 or empty: untagged
    if mode in ("access", "dot1q-tunnel"):
        # bridge.c warns "ignoring trunks in favor of implicit vlan" when tag and trunks are both
        # set without a vlan_mode: trunks play no part here.
        return [(tag, False)]
    if mode in ("native-tagged", "native-untagged"):
        # The native VLAN first, untagged (tag None: native VLAN 0, the untagged traffic itself);
        # VLAN 0 is never a tagged entry.
        plan: list[tuple[int | None, bool]] = [(tag, False)]
        plan += [(v, True) for v in info.trunks if v != 0 and v != tag]
        return plan
    # Trunk, explicit or by default (an unknown vlan_mode falls back to trunk too: bridge.c
    # "unknown VLAN mode %s, falling back to trunk mode"). The tag column is ignored in trunk
    # mode (bundle_set(): "vlan = (s->vlan_mode == PORT_VLAN_TRUNK ? -1 : ...").
    if not info.trunks:
        return [(None, False)]
    return [(None, False) if v == 0 else (v, True) for v in info.trunks]


def ovn_bridge_name(open_vswitch_external_ids: Mapping[str, str]) -> str | None:
    """The OVN integration bridge when ovn-controller is configured on this host: it reads
    external_ids:ovn-remote (required) and external_ids:ovn-bridge (default "br-int") from the
    Open_vSwitch table (ovn-controller(8), "Configuration")."""
    if not open_vswitch_external_ids.get("ovn-remote"):
        return None
    return open_vswitch_external_ids.get("ovn-bridge") or "br-int"

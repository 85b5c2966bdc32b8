"""Firewall rules that drop announcements: ethertypes 0x8035 (RARP) and 0x0806 (ARP: the GARPs),
ICMPv6 type 136 (the unsolicited NAs), in nftables and ebtables.

Where a bridge-family rule sits decides whose frames it drops (nft(8), "BRIDGE FAMILY" hooks):
our frames leave from the bridge device, so they pass `output` then `postrouting`, never
`prerouting`, `input` or `forward`; QEMU's own RARPs enter through the guest's tap, so they pass
`prerouting` then `forward`, never `output`. A drop on `output`/`postrouting` stops rarp-announce
(fail); one on `prerouting`/`forward` stops QEMU's frames only (warn: then only rarp-announce's
frames and its FDB write move the MAC). Rules of the inet/ip6/arp families see bridged traffic
only through br_netfilter (net.bridge.bridge-nf-call-*tables = 1).
"""

from __future__ import annotations

import json
from typing import Any

from rarp_announce.doctor import tools
from rarp_announce.doctor.report import Check, fail, ok, skipped, warn

RARP, ARP = 0x8035, 0x0806
_ETHER_NAMES = {"arp": ARP, "rarp": RARP, "ip": 0x0800, "ip6": 0x86DD, "vlan": 0x8100}
_NA = {136, "nd-neighbor-advert"}
_OURS_HOOKS = ("output", "postrouting")  # where frames sent from the bridge device pass
_BR_NETFILTER = "/proc/sys/net/bridge/bridge-nf-call-{}"


def nft_checks() -> list[Check]:
    ran = tools.run(["nft", "-j", "list", "ruleset"])
    if ran.missing:
        return [skipped("firewall", "nftables rules not read: tool not installed (nft)")]
    if ran.error:
        return [skipped("firewall", f"nftables rules not read: {ran.error}")]
    try:
        items = json.loads(ran.stdout).get("nftables", [])
    except (ValueError, AttributeError):
        return [skipped("firewall", "`nft -j list ruleset` printed no JSON")]
    hooks: dict[tuple[str, str, str], str] = {}
    found: list[Check] = []
    for item in items:
        chain = item.get("chain") if isinstance(item, dict) else None
        if chain and chain.get("hook"):
            hooks[(chain["family"], chain["table"], chain["name"])] = chain["hook"]
            if chain["family"] == "bridge" and chain.get("policy") == "drop":
                found.append(_policy_drop(chain))
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not rule or not _drops(rule.get("expr", [])):
            continue
        dropped = _dropped_kinds(rule.get("expr", []))
        if dropped:
            hook = hooks.get((rule["family"], rule["table"], rule["chain"]))
            found.append(_rule_check(rule, dropped, hook))
    return found or [ok("firewall", "no nftables rule drops RARP, ARP or neighbour advertisements")]


def _policy_drop(chain: dict[str, Any]) -> Check:
    where = f"nft chain bridge {chain['table']} {chain['name']} (hook {chain['hook']})"
    return warn("firewall", f"{where} has policy drop",
                "every frame no rule accepts is dropped there, announcements included"
                + (": rarp-announce's frames pass this hook" if chain["hook"] in _OURS_HOOKS else ""),
                "accept ether type { 0x8035, arp } and icmpv6 type nd-neighbor-advert in it")


def _rule_check(rule: dict[str, Any], dropped: list[str], hook: str | None) -> Check:
    family = rule["family"]
    text = render(rule.get("expr", []))
    where = f"nft rule '{text}' (table {family} {rule['table']}, chain {rule['chain']}, handle {rule.get('handle')})"
    what = f"{where} drops {', '.join(dropped)}"
    fix = f"nft delete rule {family} {rule['table']} {rule['chain']} handle {rule.get('handle')}, or narrow it"
    if family not in ("bridge", "netdev"):
        calls = [kind for kind in ("arptables", "ip6tables", "iptables") if _br_netfilter(kind)]
        if not calls:
            return ok("firewall", f"{what}, but only for routed traffic (br_netfilter is off)")
        return warn("firewall", what, f"br_netfilter passes bridged frames to it ({', '.join(calls)})", fix)
    if hook is None:
        return warn("firewall", what, "a regular chain: it drops wherever a base chain jumps to it", fix)
    if family == "bridge" and hook in _OURS_HOOKS:
        return fail("firewall", what, f"rarp-announce's frames leave from the bridge device and pass hook {hook}: "
                    "they never reach the network", fix)
    return warn("firewall", what, f"on hook {hook} it drops frames entering bridge ports, QEMU's own RARPs from the "
                "guest's tap among them: only rarp-announce's frames and its FDB write announce the guest (as on a "
                "port that is not wired yet)", fix)


def _drops(expressions: list[Any]) -> bool:
    return any(isinstance(e, dict) and "drop" in e for e in expressions)


def _dropped_kinds(expressions: list[Any]) -> list[str]:
    """Which announcements a rule's matches let through to its drop (all of them when it matches
    nothing of ethertype or ICMPv6 type: then it drops whatever its other matches select)."""
    kinds: list[str] = []
    typed = False
    for expression in expressions:
        match = expression.get("match") if isinstance(expression, dict) else None
        if not match:
            continue
        left, right, op = match.get("left", {}), match.get("right"), match.get("op", "==")
        values = _values(right)
        if _is_ethertype(left):
            typed = True
            numbers = {_ethertype(v) for v in values}
            chosen = {RARP, ARP} & numbers if op in ("==", "in") else {RARP, ARP} - numbers
            kinds += [name for number, name in ((RARP, "RARP (0x8035)"), (ARP, "ARP (0x0806)")) if number in chosen]
        elif left.get("payload", {}).get("protocol") == "icmpv6" and left.get("payload", {}).get("field") == "type":
            typed = True
            hit = bool(_NA & set(values))
            if hit == (op in ("==", "in")):
                kinds.append("neighbour advertisements (ICMPv6 136)")
    return kinds if typed else []


def _ethertype(value: Any) -> int | None:
    """nft prints an ethertype as a number, or by name (arp, ip6...), or as a hex string."""
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if value.startswith("0x"):
            try:
                return int(value, 16)
            except ValueError:
                return None
        return _ETHER_NAMES.get(value)
    return None


def _is_ethertype(left: dict[str, Any]) -> bool:
    payload = left.get("payload", {})
    if payload.get("protocol") in ("ether", "vlan") and payload.get("field") == "type":
        return True
    return left.get("meta", {}).get("key") == "protocol"


def _values(right: Any) -> list[Any]:
    if isinstance(right, dict) and "set" in right:
        return [v for v in right["set"] if not isinstance(v, dict)]
    return [right]


def render(expressions: list[Any]) -> str:
    """A rule's matches and verdict, close to how `nft list ruleset` prints them."""
    words: list[str] = []
    for expression in expressions:
        if not isinstance(expression, dict):
            continue
        if "match" in expression:
            match = expression["match"]
            left = match.get("left", {})
            if "payload" in left:
                name = f"{left['payload'].get('protocol')} {left['payload'].get('field')}"
            elif "meta" in left:
                name = f"meta {left['meta'].get('key')}"
            else:
                name = "?"
            right = match.get("right")
            shown = ("{ " + ", ".join(_show(v) for v in _values(right)) + " }") if isinstance(right, dict) else _show(right)
            op = "" if match.get("op") in ("==", "in") else f"{match.get('op')} "
            words.append(f"{name} {op}{shown}")
        elif "drop" in expression:
            words.append("drop")
    return " ".join(words)


def _show(value: Any) -> str:
    if isinstance(value, int) and value > 255:
        return f"0x{value:04x}"
    return str(value) if not isinstance(value, str) or value.isidentifier() else json.dumps(value)


def ebtables_checks() -> list[Check]:
    """ebtables-legacy's rules (ebtables-nft's are nft rules, read above)."""
    for tool in ("ebtables-legacy", "ebtables"):
        ran = tools.run([tool, "-L"])
        if ran.missing:
            continue
        if ran.error:
            return [skipped("firewall", f"ebtables rules not read: {ran.error}")]
        found = []
        for table in ("filter", "nat"):
            listed = ran if table == "filter" else tools.run([tool, "-t", table, "-L"])
            found += _ebtables_table(tool, table, listed.stdout if listed.ok else "")
        return found or [ok("firewall", f"no {tool} rule drops RARP, ARP or neighbour advertisements")]
    return [skipped("firewall", "ebtables rules not read: tool not installed (ebtables)")]


def _ebtables_table(tool: str, table: str, text: str) -> list[Check]:
    found: list[Check] = []
    chain = ""
    for line in text.splitlines():
        if line.startswith("Bridge chain:"):
            chain = line.split(":", 1)[1].split(",", 1)[0].strip()
            continue
        words = line.split()
        if "-j" not in words or words[words.index("-j") + 1:words.index("-j") + 2] != ["DROP"]:
            continue
        dropped = []
        if "-p" in words:
            proto = words[words.index("-p") + 1].lower()
            negated = words[words.index("-p") - 1] == "!" if words.index("-p") > 0 else False
            for number, names, label in ((RARP, ("0x8035", "rarp"), "RARP (0x8035)"), (ARP, ("0x0806", "0x806", "arp"), "ARP (0x0806)")):
                if (proto in names) != negated:
                    dropped.append(label)
            if proto in ("ipv6", "0x86dd") and ("136" in words or "neighbour-advertisement" in words):
                dropped.append("neighbour advertisements (ICMPv6 136)")
        if not dropped:
            continue
        what = f"{tool} -t {table} rule '{line.strip()}' in chain {chain} drops {', '.join(dropped)}"
        fix = f"{tool} -t {table} -D {chain} {line.strip()}"
        if chain in ("OUTPUT", "POSTROUTING"):
            found.append(fail("firewall", what, "rarp-announce's frames leave from the bridge device through this "
                              "chain: they never reach the network", fix))
        else:
            found.append(warn("firewall", what, "it drops frames entering bridge ports, QEMU's own RARPs among them: "
                              "only rarp-announce announces the guest", fix))
    return found


def _br_netfilter(kind: str) -> bool:
    try:
        with open(_BR_NETFILTER.format(kind)) as handle:
            return handle.read().strip() == "1"
    except OSError:
        return False

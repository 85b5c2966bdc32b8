"""The TOML configuration file: schedule defaults, uplink overrides, ignore lists, daemon and hook.

Standard library only (tomllib): the libvirt hook reads its [hook] section through this module
and must stay light. Every value is checked here, so a broken file is one line naming the key
and what it expects, and the rest of the program trusts the frozen result.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, get_args

from rarp_announce.errors import InputError
from rarp_announce.ipaddr import parse_ip
from rarp_announce.names import one_line, valid_ifname
from rarp_announce.mac import normalize_mac
from rarp_announce.model import AddressSource
from rarp_announce.address_sources import CONFIGURABLE, DEFAULTS
from rarp_announce.schedule import Schedule

DEFAULT_CONFIG_PATH = "/etc/rarp-announce/config.toml"
DEFAULT_URI = "qemu:///system"
DEFAULT_CONTROL_SOCKET = "/run/rarp-announce/control.sock"
DEFAULT_WAITER_DIR = "/run/rarp-announce/waiters"
HookMode = Literal["auto", "daemon", "standalone"]
HOOK_MODES: tuple[str, ...] = get_args(HookMode)
LogFormat = Literal["text", "json"]
# The hook's whole budget is a few tens of ms: a longer hand-off would delay every migration.
HANDOFF_TIMEOUT_MAX = 0.5
WAITER_TIMEOUT_MAX = 86400.0
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; more is a mistake
# Both from the one table of sources (address_sources.py): the defaults hold no guest-vouched source.
ADDRESS_SOURCES: tuple[AddressSource, ...] = CONFIGURABLE
DEFAULT_ADDRESS_SOURCES: tuple[AddressSource, ...] = DEFAULTS
MAX_ALLOWED_PREFIXES = 256  # per bridge: a handful of subnets is the real case
AGENT_TIMEOUT_MAX = 60.0  # the announcement waits for the addresses: longer defeats its purpose
MAX_ADDRESSES_PER_MAC = 64  # every address costs a GARP or NA per round: 64 is already a lot of frames


@dataclass(frozen=True)
class DaemonConfig:
    control_socket: str = DEFAULT_CONTROL_SOCKET
    state_dir: str = "/var/lib/rarp-announce"
    metrics: str | None = None  # "ADDR:PORT" for the Prometheus endpoint; None: no endpoint
    log_format: LogFormat = "text"
    retry_timeout: float = 60.0  # seconds to keep retrying a target whose device is not ready
    retry_interval: float = 0.5
    device_added_window: float = 300.0
    handoff_expiry: float = 600.0  # a hand-off no migration followed is forgotten after this
    keepalive_interval: int = 5
    keepalive_count: int = 3
    reconnect_max: float = 30.0
    control_group: str | None = None  # its members may use the control socket too (root always may)


@dataclass(frozen=True)
class HookConfig:
    control_socket: str = DEFAULT_CONTROL_SOCKET
    mode: HookMode = "auto"
    handoff_timeout: float = 0.05
    waiter_timeout: float = 300.0
    log_file: str = "/var/log/rarp-announce-hook.log"
    waiter_dir: str = DEFAULT_WAITER_DIR  # one lock (and the hook's copy of the XML) per waiting domain


@dataclass(frozen=True)
class OvsConfig:
    db: str | None = None  # OVSDB remote; None: $OVS_RUNDIR/db.sock, else /run/openvswitch/db.sock; "": never read
    rundir: str | None = None  # where each bridge's BRIDGE.mgmt OpenFlow socket lives; None: $OVS_RUNDIR or /run/openvswitch
    openflow: dict[str, str] = field(default_factory=dict)  # bridge -> "unix:PATH" | "tcp:HOST:PORT"
    wiring_timeout: float = 60.0  # seconds an arrival waits for its OVS port to be wired

    def remote(self) -> str | None:
        """The OVSDB remote to read, or None when OVSDB is not to be read at all."""
        if self.db == "":
            return None
        return self.db or f"unix:{self.run_dir()}/db.sock"

    def run_dir(self) -> str:
        return self.rundir or os.environ.get("OVS_RUNDIR") or "/run/openvswitch"

    def endpoint(self, bridge: str) -> str:
        """Where to speak OpenFlow to `bridge`: a configured endpoint, else its management socket."""
        return self.openflow.get(bridge) or f"unix:{self.run_dir()}/{bridge}.mgmt"


@dataclass(frozen=True)
class AddressesConfig:
    """Where a vNIC's IP addresses come from, for the gratuitous ARPs and neighbour advertisements."""

    sources: tuple[AddressSource, ...] = DEFAULT_ADDRESS_SOURCES  # asked in this order; the first to name an IP wins
    agent_timeout: float = 2.0  # seconds each libvirt source (the guest agent above all) and announce-self may take
    guest_announce: bool = False  # also ask QEMU's announce-self, so the guest announces itself (taints the domain)
    macs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # normalized MAC -> canonical IPs
    # bridge (or network's bridge) -> canonical prefixes a guest source's address must lie in; none: nothing allowed
    allow: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    schedule: Schedule = field(default_factory=Schedule)
    connect: str | None = None
    uplinks: dict[str, str] = field(default_factory=dict)  # bridge or tap -> device announced on
    ignore_domains: frozenset[str] = frozenset()
    ignore_macs: frozenset[str] = frozenset()  # normalized: lower-case, colon-separated
    sysfs_root: str = "/sys"
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    hook: HookConfig = field(default_factory=HookConfig)
    ovs: OvsConfig = field(default_factory=OvsConfig)
    addresses: AddressesConfig = field(default_factory=AddressesConfig)


def libvirt_uri(cli_value: str | None, config: Config) -> str:
    """`--connect` wins, then the config's `connect`, then LIBVIRT_DEFAULT_URI, then qemu:///system."""
    for candidate in (cli_value, config.connect, os.environ.get("LIBVIRT_DEFAULT_URI")):
        if candidate:
            return candidate
    return DEFAULT_URI


def load_config(path: str | None) -> Config:
    """Read and check a config file; None reads the default path if it exists, else defaults."""
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG_PATH):
            return Config()
        path = DEFAULT_CONFIG_PATH
    raw = _read_config(path)
    if len(raw) > MAX_CONFIG_BYTES:
        raise InputError(f"config file {path!r} is larger than {MAX_CONFIG_BYTES} bytes: is it the right file?")
    try:
        return parse_config(tomllib.loads(raw.decode("utf-8")))
    except UnicodeDecodeError:
        raise InputError(f"config file {path!r} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"config file {path!r} is not valid TOML: {one_line(str(exc))}") from None
    except InputError as exc:
        raise InputError(f"config file {path!r}: {exc}") from None
    except RecursionError:
        # From tomllib for nested arrays; from a check for dotted table headers
        # ([uplinks.a.a.a...]), which tomllib nests without recursion but a check's message
        # (repr of the value) recursed on.
        raise InputError(f"config file {path!r} nests tables or arrays too deeply to be a config") from None


def _read_config(path: str) -> bytes:
    """The file's bytes, refusing anything but a regular file: a FIFO must not freeze a daemon
    reloading on SIGHUP (O_NONBLOCK keeps even open() from waiting for a writer)."""
    shown = repr(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"config file {shown} does not exist: create it or drop --config") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read config file {shown}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"config file {shown} is a directory: give the path of a .toml file")
        if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):  # /dev/null: an empty config
            raise InputError(f"config file {shown} is not a regular file: give the path of a .toml file")
        return os.read(fd, MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read config file {shown}: {exc.strerror}") from None
    finally:
        os.close(fd)


def parse_config(document: Mapping[str, Any]) -> Config:
    """A Config from an already parsed TOML document (the checks of load_config, without the file)."""
    _only_keys("", document, ("connect", "sysfs_root", "schedule", "uplinks", "ignore", "daemon", "hook", "ovs", "addresses"))
    connect = _optional_str(document, "connect", "")
    sysfs_root = _str(document, "sysfs_root", "", "/sys")
    if not sysfs_root.startswith("/"):
        raise InputError(f"key sysfs_root: expected an absolute path, got {sysfs_root!r}")
    return Config(
        schedule=_schedule(_table(document, "schedule")),
        connect=connect,
        uplinks=_uplinks(_table(document, "uplinks")),
        ignore_domains=_ignore_domains(_table(document, "ignore")),
        ignore_macs=_ignore_macs(_table(document, "ignore")),
        sysfs_root=sysfs_root,
        daemon=_daemon(_table(document, "daemon")),
        hook=_hook(_table(document, "hook")),
        ovs=_ovs(_table(document, "ovs")),
        addresses=_addresses(_table(document, "addresses")),
    )


_SCHEDULE_KEYS = {
    "initial": "initial_ms",
    "max": "max_ms",
    "rounds": "rounds",
    "step": "step_ms",
    "repeat": "repeat",
    "repeat_interval": "repeat_interval_s",
}


def _schedule(table: Mapping[str, Any]) -> Schedule:
    _only_keys("schedule", table, tuple(_SCHEDULE_KEYS))
    values: dict[str, Any] = {}
    for key, attribute in _SCHEDULE_KEYS.items():
        if key not in table:
            continue
        value = table[key]
        if key == "repeat_interval":
            values[attribute] = _number(value, f"[schedule] {key}", "a number of seconds")
        else:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"key [schedule] {key}: expected an integer, got {_shown(value)}")
            values[attribute] = value
    try:
        return Schedule(**values)
    except InputError as exc:
        # Schedule's own message names the CLI option; the config key is what the operator edits.
        raise InputError(f"[schedule]: {exc}") from None


def _uplinks(table: Mapping[str, Any]) -> dict[str, str]:
    uplinks: dict[str, str] = {}
    for name, device in table.items():
        key = f"[uplinks] {name}"
        _check_ifname(name, f"key {key}: the name")
        if not isinstance(device, str):
            raise InputError(f"key {key}: expected a device name in quotes, got {_shown(device)}")
        _check_ifname(device, f"key {key}")
        if device == name:
            raise InputError(f"key {key}: maps the device to itself; remove the line")
        uplinks[name] = device
    return uplinks


def _ignore_domains(table: Mapping[str, Any]) -> frozenset[str]:
    _only_keys("ignore", table, ("domains", "macs"))
    names = _str_list(table, "domains", "ignore")
    for name in names:
        if not name.strip():
            raise InputError("key [ignore] domains: expected domain names or UUIDs, got an empty string")
    return frozenset(names)


def _ignore_macs(table: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(_parsed(normalize_mac, text, f"[ignore] macs[{index}]")
                     for index, text in enumerate(_str_list(table, "macs", "ignore")))


def _daemon(table: Mapping[str, Any]) -> DaemonConfig:
    defaults = DaemonConfig()
    _only_keys("daemon", table, tuple(f.name for f in dataclasses.fields(DaemonConfig)))
    values: dict[str, Any] = {}
    if "control_socket" in table:
        values["control_socket"] = _path(table, "control_socket", "daemon")
    if "state_dir" in table:
        values["state_dir"] = _path(table, "state_dir", "daemon")
    if "metrics" in table:
        values["metrics"] = _metrics(table["metrics"])
    if "log_format" in table:
        values["log_format"] = _choice(table, "log_format", "daemon", ("text", "json"))
    if "control_group" in table:
        values["control_group"] = _group(table["control_group"], "[daemon] control_group")
    for key in ("retry_timeout", "retry_interval", "device_added_window", "reconnect_max", "handoff_expiry"):
        if key in table:
            values[key] = _positive(table[key], f"[daemon] {key}")
    if "keepalive_interval" in table:
        values["keepalive_interval"] = _int_range(table["keepalive_interval"], "[daemon] keepalive_interval", 1, 3600)
    if "keepalive_count" in table:
        # libvirt: count 0 with an interval disables the keepalive's dead-peer detection
        values["keepalive_count"] = _int_range(table["keepalive_count"], "[daemon] keepalive_count", 0, 100)
    return dataclasses.replace(defaults, **values)


def _hook(table: Mapping[str, Any]) -> HookConfig:
    defaults = HookConfig()
    _only_keys("hook", table, tuple(f.name for f in dataclasses.fields(HookConfig)))
    values: dict[str, Any] = {}
    if "control_socket" in table:
        values["control_socket"] = _path(table, "control_socket", "hook")
    if "log_file" in table:
        values["log_file"] = _path(table, "log_file", "hook")
    if "waiter_dir" in table:
        values["waiter_dir"] = _path(table, "waiter_dir", "hook")
    if "mode" in table:
        values["mode"] = _choice(table, "mode", "hook", HOOK_MODES)
    if "handoff_timeout" in table:
        values["handoff_timeout"] = hook_timeout(table["handoff_timeout"], "key [hook] handoff_timeout", HANDOFF_TIMEOUT_MAX)
    if "waiter_timeout" in table:
        values["waiter_timeout"] = hook_timeout(table["waiter_timeout"], "key [hook] waiter_timeout", WAITER_TIMEOUT_MAX)
    return dataclasses.replace(defaults, **values)


def _ovs(table: Mapping[str, Any]) -> OvsConfig:
    _only_keys("ovs", table, ("db", "rundir", "openflow", "wiring_timeout"))
    values: dict[str, Any] = {}
    if "db" in table:
        db = table["db"]
        if not isinstance(db, str) or (db and not _ENDPOINT.match(db)):
            raise InputError(
                f'key [ovs] db: expected "unix:/path/db.sock" or "tcp:HOST:PORT", or "" to never read OVSDB, got {_shown(db)}'
            )
        values["db"] = db
    if "rundir" in table:
        values["rundir"] = _path(table, "rundir", "ovs")
    if "openflow" in table:
        endpoints = _table(table, "openflow")
        for bridge, endpoint in endpoints.items():
            _check_ifname(bridge, f"key [ovs.openflow] {bridge}: the bridge name")
            if not isinstance(endpoint, str) or not _ENDPOINT.match(endpoint):
                raise InputError(
                    f'key [ovs.openflow] {bridge}: expected "unix:/path/{bridge}.mgmt" or "tcp:HOST:PORT", got {_shown(endpoint)}'
                )
        values["openflow"] = dict(endpoints)
    if "wiring_timeout" in table:
        values["wiring_timeout"] = _positive(table["wiring_timeout"], "[ovs] wiring_timeout")
    return OvsConfig(**values)


def _addresses(table: Mapping[str, Any]) -> AddressesConfig:
    _only_keys("addresses", table, ("sources", "agent_timeout", "guest_announce", "macs", "allow"))
    values: dict[str, Any] = {}
    if "sources" in table:
        values["sources"] = _address_sources(table["sources"])
    if "agent_timeout" in table:
        values["agent_timeout"] = hook_timeout(table["agent_timeout"], "key [addresses] agent_timeout", AGENT_TIMEOUT_MAX)
    if "guest_announce" in table:
        value = table["guest_announce"]
        if not isinstance(value, bool):
            raise InputError(f"key [addresses] guest_announce: expected true or false, got {_shown(value)}")
        values["guest_announce"] = value
    if "macs" in table:
        values["macs"] = _address_macs(table["macs"])
    if "allow" in table:
        values["allow"] = _address_allow(table["allow"])
    return AddressesConfig(**values)


def _address_sources(value: Any) -> tuple[AddressSource, ...]:
    if not isinstance(value, list):
        raise InputError(f"key [addresses] sources: expected a list such as {list(DEFAULT_ADDRESS_SOURCES)}, got {_shown(value)}")
    sources: list[AddressSource] = []
    for index, source in enumerate(value):
        if source not in ADDRESS_SOURCES:
            raise InputError(
                f"key [addresses] sources[{index}]: expected one of {', '.join(ADDRESS_SOURCES)}, got {_shown(source)}"
            )
        if source in sources:
            # The order is the precedence: a second mention could only mean a mistake.
            raise InputError(f"key [addresses] sources[{index}]: {source!r} is listed twice")
        sources.append(source)
    return tuple(sources)


def _address_macs(value: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise InputError(f"key [addresses] macs: expected a table [addresses.macs], got {_shown(value)}")
    macs: dict[str, tuple[str, ...]] = {}
    spelled: dict[str, str] = {}
    for name, addresses in value.items():
        # A quoted TOML key may hold anything, a newline included: show it quoted unless plain.
        key = f"[addresses.macs] {name if name.isprintable() and len(name) <= 40 else _shown(name)}"
        mac = _parsed(normalize_mac, name, key)
        if mac in spelled:
            raise InputError(f"key {key}: the same MAC as key {spelled[mac]!r}; merge the two lists")
        if not isinstance(addresses, list) or not all(isinstance(item, str) for item in addresses):
            raise InputError(f'key {key}: expected a list of IP addresses such as ["192.0.2.10", "2001:db8::10"], got {_shown(addresses)}')
        if len(addresses) > MAX_ADDRESSES_PER_MAC:
            raise InputError(f"key {key}: {len(addresses)} addresses, at most {MAX_ADDRESSES_PER_MAC} per MAC")
        canonical: list[str] = []
        for index, text in enumerate(addresses):
            ip = _parsed(parse_ip, text, f"{key}[{index}]")
            if ip in canonical:
                raise InputError(f"key {key}[{index}]: {ip} is listed twice")
            canonical.append(ip)
        spelled[mac] = name
        macs[mac] = tuple(canonical)
    return macs


def _address_allow(value: Any) -> dict[str, tuple[str, ...]]:
    """[addresses.allow]: bridge -> the prefixes inside which a guest source may name addresses."""
    import ipaddress

    if not isinstance(value, dict):
        raise InputError(f"key [addresses] allow: expected a table [addresses.allow], got {_shown(value)}")
    allow: dict[str, tuple[str, ...]] = {}
    for bridge, prefixes in value.items():
        key = f"[addresses.allow] {bridge if bridge.isprintable() and len(bridge) <= 40 else _shown(bridge)}"
        _check_ifname(bridge, f"key {key}: the bridge name")
        if not isinstance(prefixes, list) or not all(isinstance(item, str) for item in prefixes):
            raise InputError(f'key {key}: expected a list of prefixes such as ["192.0.2.0/24", "2001:db8::/64"], got {_shown(prefixes)}')
        if len(prefixes) > MAX_ALLOWED_PREFIXES:
            raise InputError(f"key {key}: {len(prefixes)} prefixes, at most {MAX_ALLOWED_PREFIXES} per bridge")
        canonical: list[str] = []
        for index, text in enumerate(prefixes):
            try:
                network = ipaddress.ip_network(text.strip(), strict=True)
            except ValueError as exc:
                hint = ""
                if "host bits set" in str(exc):
                    hint = f": did you mean {ipaddress.ip_network(text.strip(), strict=False)}?"
                raise InputError(f"key {key}[{index}]: {_shown(text)} is not a prefix such as 192.0.2.0/24 ({one_line(str(exc))}){hint}") from None
            if str(network) not in canonical:
                canonical.append(str(network))
        allow[bridge] = tuple(canonical)
    return allow


_ENDPOINT = re.compile(r"^(unix:/\S+|tcp:[^\s:]+:[0-9]{1,5}|tcp:\[[0-9a-fA-F:]+\]:[0-9]{1,5})$")


def _group(value: Any, key: str) -> str | None:
    """The name of a group that exists on this host ("" for none): a typo must not start a daemon
    whose socket quietly answers root only."""
    import grp

    if not isinstance(value, str) or any(c.isspace() or c in ":,\0" for c in value):
        raise InputError(f'key {key}: expected a group name such as "libvirt", or "" for none, got {_shown(value)}')
    if not value:
        return None
    try:
        grp.getgrnam(value)
    except KeyError:
        raise InputError(f"key {key}: no group {value!r} on this host (getent group {value} finds none): "
                         "create it or name another") from None
    return value


def hook_timeout(value: Any, label: str, high: float) -> float:
    """One check for the hook's timeouts, whether they come from the config or `hook install`."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not 0 < value <= high):
        raise InputError(f"{label}: expected a number of seconds, 0 < s <= {high:g}, got {_shown(value)}")
    return float(value)


def _metrics(value: Any) -> str | None:
    expected = 'expected "ADDR:PORT" such as "127.0.0.1:9477" or "[::1]:9477", or "" for none'
    if not isinstance(value, str):
        raise InputError(f"key [daemon] metrics: {expected}, got {_shown(value)}")
    if value == "":
        return None
    try:
        parse_address(value)
    except InputError:
        raise InputError(f"key [daemon] metrics: {expected}, got {_shown(value)}") from None
    return value


def parse_address(address: str) -> tuple[str, int]:
    """'ADDR:PORT' (IPv6 as [::1]:9477) -> (addr, port); the one check of a metrics address."""
    host, sep, port_text = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if (not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536
            or any(c.isspace() for c in host) or ("[" in host or "]" in host)
            or (":" in host and not bracketed)):
        raise InputError(f"invalid metrics address {_shown(address)}: expected ADDR:PORT, e.g. 127.0.0.1:9477 or [::1]:9477")
    return host, int(port_text)


def _table(document: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    table = document.get(name, {})
    if not isinstance(table, dict):
        raise InputError(f"key {name}: expected a table [{name}], got {_shown(table)}")
    return table


def _only_keys(section: str, table: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            where = f"[{section}] {key}" if section else key
            raise InputError(f"unknown key {where}: expected one of {', '.join(allowed)}")


def _str(table: Mapping[str, Any], key: str, section: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise InputError(f"key {_where(section, key)}: expected a non-empty string, got {_shown(value)}")
    return value


def _optional_str(table: Mapping[str, Any], key: str, section: str) -> str | None:
    if key not in table:
        return None
    return _str(table, key, section, "")


def _path(table: Mapping[str, Any], key: str, section: str) -> str:
    value = _str(table, key, section, "")
    if not value.startswith("/"):
        raise InputError(f"key {_where(section, key)}: expected an absolute path, got {value!r}")
    return value


def _choice(table: Mapping[str, Any], key: str, section: str, choices: tuple[str, ...]) -> str:
    value = table[key]
    if value not in choices:
        raise InputError(f"key {_where(section, key)}: expected one of {', '.join(choices)}, got {_shown(value)}")
    return value


def _str_list(table: Mapping[str, Any], key: str, section: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InputError(f"key {_where(section, key)}: expected a list of strings, got {_shown(value)}")
    return value


def _number(value: Any, key: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"key {key}: expected {what}, got {_shown(value)}")
    return float(value)


def _positive(value: Any, key: str) -> float:
    number = _number(value, key, "a positive number of seconds")
    if number <= 0:
        raise InputError(f"key {key}: expected a positive number of seconds, got {_shown(value)}")
    return number


def _int_range(value: Any, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"key {key}: expected an integer {low}..{high}, got {_shown(value)}")
    return value


def _check_ifname(name: str, where: str) -> None:
    if not valid_ifname(name):
        raise InputError(f"{where}: expected a network device name (1..15 characters, no '/', ':' or spaces), got {name!r}")


def _parsed(parse: Callable[[str], str], text: str, key: str) -> str:
    """parse(text), its InputError prefixed with the config key that gave the text."""
    try:
        return parse(text)
    except InputError as exc:
        raise InputError(f"key {key}: {exc}") from None


def _where(section: str, key: str) -> str:
    return f"[{section}] {key}" if section else key


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

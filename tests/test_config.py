"""config.py: every key read from a real TOML file, defaults, and one-line errors naming the key."""

from __future__ import annotations

import pytest

from rarp_announce import config as config_module
from rarp_announce.config import AddressesConfig, Config, DaemonConfig, HookConfig, libvirt_uri, load_config
from rarp_announce.errors import InputError
from rarp_announce.schedule import Schedule

FULL = """
connect = "qemu+ssh://root@hv2/system"
sysfs_root = "/srv/sysfs"

[schedule]
initial = 100
max = 1000
rounds = 7
step = 50
repeat = 3
repeat_interval = 1.5

[uplinks]
br-ex = "bond0"
tap-web = "eth1"

[ignore]
domains = ["scratch", "0c3a9f2e-8d16-4e43-a4a6-5f2b1a0e6c11"]
macs = ["52-54-00-AA-BB-CC", "5254.0012.3456"]

[daemon]
control_socket = "/run/ra/control.sock"
state_dir = "/var/lib/ra"
metrics = "127.0.0.1:9477"
log_format = "json"
retry_timeout = 30
retry_interval = 0.25
device_added_window = 120.0
keepalive_interval = 10
keepalive_count = 5
reconnect_max = 15

[hook]
control_socket = "/run/ra/control.sock"
mode = "standalone"
handoff_timeout = 0.1
waiter_timeout = 600
log_file = "/var/log/ra-hook.log"
"""


def write(tmp_path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def check_named_in_one_line(tmp_path, text: str, message: str) -> None:
    """Loading `text` fails with one line naming the file, then `message`."""
    path = write(tmp_path, text)
    with pytest.raises(InputError) as caught:
        load_config(path)
    text_of_error = str(caught.value)
    assert text_of_error.startswith(f"config file {path!r}: ")
    assert message in text_of_error
    assert "\n" not in text_of_error


def test_every_key_is_read(tmp_path):
    config = load_config(write(tmp_path, FULL))
    assert config == Config(
        schedule=Schedule(initial_ms=100, max_ms=1000, rounds=7, step_ms=50, repeat=3, repeat_interval_s=1.5),
        connect="qemu+ssh://root@hv2/system",
        uplinks={"br-ex": "bond0", "tap-web": "eth1"},
        ignore_domains=frozenset({"scratch", "0c3a9f2e-8d16-4e43-a4a6-5f2b1a0e6c11"}),
        ignore_macs=frozenset({"52:54:00:aa:bb:cc", "52:54:00:12:34:56"}),
        sysfs_root="/srv/sysfs",
        daemon=DaemonConfig(
            control_socket="/run/ra/control.sock",
            state_dir="/var/lib/ra",
            metrics="127.0.0.1:9477",
            log_format="json",
            retry_timeout=30.0,
            retry_interval=0.25,
            device_added_window=120.0,
            keepalive_interval=10,
            keepalive_count=5,
            reconnect_max=15.0,
        ),
        hook=HookConfig(
            control_socket="/run/ra/control.sock",
            mode="standalone",
            handoff_timeout=0.1,
            waiter_timeout=600.0,
            log_file="/var/log/ra-hook.log",
        ),
    )
    assert isinstance(config.daemon.retry_timeout, float)


def test_empty_file_gives_the_defaults(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config == Config()
    assert config.schedule == Schedule()
    assert config.schedule.burst_offsets_ms() == [0, 50, 200, 450, 800]
    assert config.connect is None and config.uplinks == {} and config.sysfs_root == "/sys"
    assert config.daemon.control_socket == config.hook.control_socket == "/run/rarp-announce/control.sock"
    assert config.daemon.metrics is None and config.daemon.log_format == "text"
    assert (config.daemon.retry_timeout, config.daemon.retry_interval) == (60.0, 0.5)
    assert (config.daemon.keepalive_interval, config.daemon.keepalive_count, config.daemon.reconnect_max) == (5, 3, 30.0)
    assert config.daemon.device_added_window == 300.0
    assert (config.hook.mode, config.hook.handoff_timeout, config.hook.waiter_timeout) == ("auto", 0.05, 300.0)
    assert config.hook.log_file == "/var/log/rarp-announce-hook.log"


def test_partial_schedule_keeps_the_other_defaults(tmp_path):
    config = load_config(write(tmp_path, "[schedule]\nrepeat = 3\n"))
    assert config.schedule == Schedule(repeat=3)


def test_none_reads_the_default_path_only_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    assert load_config(None) == Config()
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", write(tmp_path, 'connect = "test:///default"\n'))
    assert load_config(None).connect == "test:///default"


def test_metrics_empty_string_means_no_endpoint(tmp_path):
    assert load_config(write(tmp_path, '[daemon]\nmetrics = ""\n')).daemon.metrics is None
    assert load_config(write(tmp_path, '[daemon]\nmetrics = "[::1]:9100"\n')).daemon.metrics == "[::1]:9100"


@pytest.mark.parametrize(
    "text, message",
    [
        ("connect = 5", "key connect: expected a non-empty string, got 5"),
        ('colour = "blue"', "unknown key colour: expected one of connect, sysfs_root, schedule, uplinks, ignore, daemon, hook"),
        ('sysfs_root = "sys"', "key sysfs_root: expected an absolute path, got 'sys'"),
        ("schedule = 3", "key schedule: expected a table [schedule], got 3"),
        ("[schedule]\nrounds = 0", "[schedule]: invalid rounds 0: expected an integer 1..1000"),
        ('[schedule]\ninitial = "50"', "key [schedule] initial: expected an integer, got '50'"),
        ("[schedule]\nstep = 1.5", "key [schedule] step: expected an integer, got 1.5"),
        ("[schedule]\nrepeat_interval = 0", "[schedule]: invalid repeat-interval 0.0: expected 0.001..3600 seconds"),
        ("[schedule]\nrepeat_interval = true", "key [schedule] repeat_interval: expected a number of seconds, got True"),
        ("[schedule]\nburst = 3", "unknown key [schedule] burst: expected one of initial, max, rounds, step, repeat, repeat_interval"),
        ("[uplinks]\nbr0 = 5", "key [uplinks] br0: expected a device name in quotes, got 5"),
        ('[uplinks]\nbr0 = "a/b"', "key [uplinks] br0: expected a network device name (1..15 characters, no '/', ':' or spaces), got 'a/b'"),
        ('[uplinks]\nbr0 = "a-very-long-device-name"', "key [uplinks] br0: expected a network device name"),
        ('[uplinks]\n"bad name" = "eth0"', "key [uplinks] bad name: the name: expected a network device name"),
        ('[uplinks]\nbr0 = "br0"', "key [uplinks] br0: maps the device to itself; remove the line"),
        ('[ignore]\ndomains = "web"', "key [ignore] domains: expected a list of strings, got 'web'"),
        ('[ignore]\ndomains = [""]', "key [ignore] domains: expected domain names or UUIDs, got an empty string"),
        ('[ignore]\nmacs = ["52:54:00:12:34:56", "nope"]', "key [ignore] macs[1]: invalid MAC 'nope'"),
        ('[ignore]\nmacs = ["01:00:5e:00:00:01"]', "key [ignore] macs[0]: MAC '01:00:5e:00:00:01' is a multicast address"),
        ('[ignore]\nvms = []', "unknown key [ignore] vms: expected one of domains, macs"),
        ('[daemon]\nlog_format = "xml"', "key [daemon] log_format: expected one of text, json, got 'xml'"),
        ('[daemon]\nmetrics = "9477"', 'key [daemon] metrics: expected "ADDR:PORT"'),
        ('[daemon]\nmetrics = "127.0.0.1:99999"', 'key [daemon] metrics: expected "ADDR:PORT"'),
        ("[daemon]\nretry_timeout = -1", "key [daemon] retry_timeout: expected a positive number of seconds, got -1"),
        ("[daemon]\nretry_interval = nan", "key [daemon] retry_interval: expected a positive number of seconds, got nan"),
        ("[daemon]\nkeepalive_interval = 0", "key [daemon] keepalive_interval: expected an integer 1..3600, got 0"),
        ("[daemon]\nkeepalive_count = 2.5", "key [daemon] keepalive_count: expected an integer 0..100, got 2.5"),
        ('[daemon]\nstate_dir = "var/lib"', "key [daemon] state_dir: expected an absolute path, got 'var/lib'"),
        ('[daemon]\nsocket = "/x"', "unknown key [daemon] socket: expected one of control_socket, state_dir, metrics"),
        ('[hook]\nmode = "always"', "key [hook] mode: expected one of auto, daemon, standalone, got 'always'"),
        ("[hook]\nhandoff_timeout = 0", "key [hook] handoff_timeout: expected a number of seconds, 0 < s <= 0.5, got 0"),
        ("[hook]\nhandoff_timeout = 2", "key [hook] handoff_timeout: expected a number of seconds, 0 < s <= 0.5, got 2"),
        ('[daemon]\nmetrics = ":9477"', 'key [daemon] metrics: expected "ADDR:PORT"'),
        ('[daemon]\nmetrics = "::1:9477"', 'key [daemon] metrics: expected "ADDR:PORT"'),
        ('[ovs]\ndb = "/run/openvswitch/db.sock"', 'key [ovs] db: expected "unix:/path/db.sock" or "tcp:HOST:PORT"'),
        ('[ovs]\nwiring_timeout = 0', "key [ovs] wiring_timeout: expected a positive number of seconds, got 0"),
        ('[ovs.openflow]\n"br:1" = "unix:/x"', "key [ovs.openflow] br:1: the bridge name"),
        ('[ovs.openflow]\nbr-int = "br-int.mgmt"', 'key [ovs.openflow] br-int: expected "unix:/path/br-int.mgmt" or "tcp:HOST:PORT"'),
        ('[hook]\nlog_file = ""', "key [hook] log_file: expected a non-empty string, got ''"),
        ("[hook]\nwaiter = 1", "unknown key [hook] waiter: expected one of control_socket, mode, handoff_timeout"),
    ],
)
def test_broken_keys_are_named_in_one_line(tmp_path, text, message):
    check_named_in_one_line(tmp_path, text, message)


def test_invalid_toml_is_one_line(tmp_path):
    path = write(tmp_path, "[schedule\nrounds = 3\n")
    with pytest.raises(InputError, match=r"is not valid TOML: .*line 1") as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: str(tmp / "missing.toml"), "does not exist: create it or drop --config"),
        (lambda tmp: str(tmp), "is a directory"),
    ],
)
def test_unreadable_file(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        load_config(make(tmp_path))


def test_binary_and_huge_files_are_refused(tmp_path):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"connect = '\xff\xfe'\n")
    with pytest.raises(InputError, match="is not UTF-8 text"):
        load_config(str(binary))
    huge = tmp_path / "huge.toml"
    huge.write_bytes(b"#" * (config_module.MAX_CONFIG_BYTES + 10))
    with pytest.raises(InputError, match="is larger than"):
        load_config(str(huge))


def test_config_is_frozen():
    config = Config()
    with pytest.raises(AttributeError):
        config.connect = "x"  # type: ignore[misc]


def test_libvirt_uri_precedence(monkeypatch):
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    assert libvirt_uri(None, Config()) == "qemu:///system"
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "test:///default")
    assert libvirt_uri(None, Config()) == "test:///default"
    assert libvirt_uri(None, Config(connect="qemu:///session")) == "qemu:///session"
    assert libvirt_uri("qemu+ssh://hv2/system", Config(connect="qemu:///session")) == "qemu+ssh://hv2/system"


def test_config_module_loads_no_heavy_library():
    import subprocess
    import sys

    # The hook reads its [hook] section through this module and must stay stdlib-only.
    code = (
        "import sys; import rarp_announce.config; "
        "print(sorted(m for m in ('scapy', 'libvirt', 'pyroute2', 'typer', 'prometheus_client') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


ADDRESSES = """
[addresses]
sources = ["config", "lease", "agent"]
agent_timeout = 0.5
guest_announce = true

[addresses.macs]
"52-54-00-12-34-56" = ["192.0.2.10", "2001:DB8:0:0::10"]
"5254.0012.3457" = []
"""


def test_addresses_section_is_read(tmp_path):
    config = load_config(write(tmp_path, ADDRESSES))
    assert config.addresses == AddressesConfig(
        sources=("config", "lease", "agent"),
        agent_timeout=0.5,
        guest_announce=True,
        macs={"52:54:00:12:34:56": ("192.0.2.10", "2001:db8::10"), "52:54:00:12:34:57": ()},
    )
    assert config == Config(addresses=config.addresses)  # nothing else moved


def test_addresses_defaults(tmp_path):
    addresses = load_config(write(tmp_path, "")).addresses
    assert addresses == AddressesConfig()
    # the guest agent is opt-in: qemu-guest-agent may never answer
    assert addresses.sources == ("metadata", "config", "nwfilter", "lease")
    assert (addresses.agent_timeout, addresses.guest_announce, addresses.macs) == (2.0, False, {})
    assert load_config(write(tmp_path, "[addresses]\nsources = []\n")).addresses.sources == ()
    assert load_config(write(tmp_path, "[addresses]\nagent_timeout = 3\n")).addresses.agent_timeout == 3.0


@pytest.mark.parametrize(
    "text, message",
    [
        ("addresses = 1", "key addresses: expected a table [addresses], got 1"),
        ("[addresses]\nsource = []", "unknown key [addresses] source: expected one of sources, agent_timeout, guest_announce, macs, allow"),
        ('[addresses]\nsources = "lease"', "key [addresses] sources: expected a list such as ['metadata', 'config', 'nwfilter', 'lease'], got 'lease'"),
        ('[addresses]\nsources = ["lease", "dhcp"]', "key [addresses] sources[1]: expected one of metadata, config, nwfilter, lease, arp, agent, got 'dhcp'"),
        ('[addresses]\nsources = ["lease", 3]', "key [addresses] sources[1]: expected one of metadata, config, nwfilter, lease, arp, agent, got 3"),
        ('[addresses]\nsources = ["arp", "lease", "arp"]', "key [addresses] sources[2]: 'arp' is listed twice"),
        ("[addresses]\nagent_timeout = 0", "key [addresses] agent_timeout: expected a number of seconds, 0 < s <= 60, got 0"),
        ("[addresses]\nagent_timeout = -1.5", "key [addresses] agent_timeout: expected a number of seconds, 0 < s <= 60, got -1.5"),
        ("[addresses]\nagent_timeout = 61", "key [addresses] agent_timeout: expected a number of seconds, 0 < s <= 60, got 61"),
        ("[addresses]\nagent_timeout = nan", "key [addresses] agent_timeout: expected a number of seconds, 0 < s <= 60, got nan"),
        ('[addresses]\nagent_timeout = "2"', "key [addresses] agent_timeout: expected a number of seconds, 0 < s <= 60, got '2'"),
        ("[addresses]\nagent_timeout = true", "key [addresses] agent_timeout: expected a number of seconds, 0 < s <= 60, got True"),
        ('[addresses]\nguest_announce = "yes"', "key [addresses] guest_announce: expected true or false, got 'yes'"),
        ("[addresses]\nguest_announce = 1", "key [addresses] guest_announce: expected true or false, got 1"),
        ("[addresses]\nmacs = 5", "key [addresses] macs: expected a table [addresses.macs], got 5"),
        ('[addresses.macs]\n"nope" = ["192.0.2.10"]', "key [addresses.macs] nope: invalid MAC 'nope'"),
        ('[addresses.macs]\n"01:00:5e:00:00:01" = ["192.0.2.10"]', "key [addresses.macs] 01:00:5e:00:00:01: MAC '01:00:5e:00:00:01' is a multicast address"),
        ('[addresses.macs]\n"52:54:00:12:34:56\\nx" = ["192.0.2.10"]', "key [addresses.macs] '52:54:00:12:34:56\\nx': invalid MAC"),
        ('[addresses.macs]\n"52:54:00:12:34:56" = "192.0.2.10"', 'key [addresses.macs] 52:54:00:12:34:56: expected a list of IP addresses such as ["192.0.2.10", "2001:db8::10"], got \'192.0.2.10\''),
        ('[addresses.macs]\n"52:54:00:12:34:56" = [1]', "key [addresses.macs] 52:54:00:12:34:56: expected a list of IP addresses"),
        ('[addresses.macs]\n"52:54:00:12:34:56" = ["192.0.2.10", "127.0.0.1"]',
         "key [addresses.macs] 52:54:00:12:34:56[1]: IP address '127.0.0.1' is a loopback address: it never leaves its host"),
        ('[addresses.macs]\n"52:54:00:12:34:56" = ["192.0.2.0/24"]', "key [addresses.macs] 52:54:00:12:34:56[0]: IP address '192.0.2.0/24' is a prefix"),
        ('[addresses.macs]\n"52:54:00:12:34:56" = ["ff02::1"]', "key [addresses.macs] 52:54:00:12:34:56[0]: IP address 'ff02::1' is a multicast address"),
        ('[addresses.macs]\n"52:54:00:12:34:56" = ["web01"]', "key [addresses.macs] 52:54:00:12:34:56[0]: invalid IP address 'web01'"),
        ('[addresses.macs]\n"52:54:00:12:34:56" = ["2001:db8::10", "2001:DB8::10"]', "key [addresses.macs] 52:54:00:12:34:56[1]: 2001:db8::10 is listed twice"),
        ('[addresses.macs]\n"52:54:00:12:34:56" = []\n"52-54-00-12-34-56" = []',
         "key [addresses.macs] 52-54-00-12-34-56: the same MAC as key '52:54:00:12:34:56'; merge the two lists"),
        ('[addresses.macs]\n"52:54:00:12:34:56" = [' + ", ".join(f'"10.0.0.{i}"' for i in range(1, 66)) + "]",
         "key [addresses.macs] 52:54:00:12:34:56: 65 addresses, at most 64 per MAC"),
        ("[addresses]\nallow = 1", "key [addresses] allow: expected a table [addresses.allow], got 1"),
        ('[addresses.allow]\n"br 0" = ["192.0.2.0/24"]', "key [addresses.allow] br 0: the bridge name: expected a network device name"),
        ('[addresses.allow]\nbr0 = "192.0.2.0/24"', 'key [addresses.allow] br0: expected a list of prefixes such as ["192.0.2.0/24", "2001:db8::/64"], got \'192.0.2.0/24\''),
        ('[addresses.allow]\nbr0 = ["192.0.2.5/24"]', "key [addresses.allow] br0[0]: '192.0.2.5/24' is not a prefix such as 192.0.2.0/24 (192.0.2.5/24 has host bits set): did you mean 192.0.2.0/24?"),
        ('[addresses.allow]\nbr0 = ["gateway"]', "key [addresses.allow] br0[0]: 'gateway' is not a prefix such as 192.0.2.0/24"),
        ("[addresses.allow]\nbr0 = [" + ", ".join(f'"10.{i}.0.0/16"' for i in range(257)) + "]",
         "key [addresses.allow] br0: 257 prefixes, at most 256 per bridge"),
    ],
)
def test_broken_addresses_keys_are_named_in_one_line(tmp_path, text, message):
    check_named_in_one_line(tmp_path, text, message)


def test_allowed_prefixes_are_canonical_per_bridge(tmp_path):
    text = '[addresses]\nsources = ["metadata", "arp", "agent"]\n[addresses.allow]\nbr0 = ["192.0.2.0/24", "2001:DB8:0::/64", "192.0.2.0/24"]\nvirbr0 = []\n'
    addresses = load_config(write(tmp_path, text)).addresses
    assert addresses.sources == ("metadata", "arp", "agent")
    assert addresses.allow == {"br0": ("192.0.2.0/24", "2001:db8::/64"), "virbr0": ()}
    assert AddressesConfig().allow == {}  # unset: no guest-reported address is allowed anywhere


def test_sources_derive_from_the_one_table():
    from rarp_announce import address_sources as sources

    assert config_module.ADDRESS_SOURCES == tuple(s.name for s in sources.SOURCES if s.name != "cli")
    # the defaults hold no source only the guest vouches for
    assert [sources.vouched_by(name) for name in config_module.DEFAULT_ADDRESS_SOURCES] == ["operator", "operator", "operator", "host"]
    assert sorted(sources.GUEST) == ["agent", "arp"]

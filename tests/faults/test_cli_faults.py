"""Rows 10, 11, 12 and 14 (the bogus MAC): every command fails in one line, no traceback, with
the exit code of its kind (2: the input, 1: the run), and a closed or full stdout never costs a
frame. Frames only ever leave inside this test's own netns (the `veth` fixture)."""

from __future__ import annotations

import subprocess

import pytest

from rarp_announce.lab.netns import Capture
from tests.conftest import CLI, ROOT

MAC = "52:54:00:c1:10:01"
QUICK = ["--initial", "5", "--max", "20", "--rounds", "3", "--step", "5"]  # 3 frames in 15 ms
NESTED_TOML = "a = " + "[" * 100_000 + "]" * 100_000 + "\n"


def cli(argv: list, *, netns: str | None = None, shell_suffix: str | None = None) -> subprocess.CompletedProcess:
    """Run the CLI (inside `netns` if given); `shell_suffix` redirects its stdout (">/dev/full", ">&-")."""
    command = [*CLI, *argv]
    if shell_suffix is not None:
        command = ["sh", "-c", f'exec "$@" {shell_suffix}', "sh", *command]
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    stdout = None if shell_suffix is not None else subprocess.PIPE
    return subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, timeout=60, cwd=ROOT)


def one_line(result: subprocess.CompletedProcess) -> str:
    err = result.stderr.decode(errors="replace")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith("rarp-announce: error: "), lines[0]
    return lines[0]


def rarp_frames(capture: Capture, count: int) -> int:
    return len(capture.frames(count=count + 1, timeout=0.5))


@pytest.mark.parametrize("command", [["send", MAC, "--iface", "tx"], ["domain", "test", "--connect", "test:///default"]])
def test_an_empty_pcap_name_is_one_line_and_sends_nothing(veth, command) -> None:
    with Capture(veth, "rx") as rx:
        result = cli([*command, "--pcap", "", *QUICK], netns=veth)
        assert rarp_frames(rx, 0) == 0
    assert result.returncode == 2
    assert "--pcap needs a file name" in one_line(result)


@pytest.mark.parametrize("argv, code, message", [
    (["send", MAC, "--iface", "\udcff\udcfe", "--dry-run"], 2, "invalid --iface name"),
    (["send", MAC, "--iface", "vA:1", "--dry-run"], 2, "invalid --iface name 'vA:1'"),
    (["send", MAC, "--iface", "tx", "--pcap", "/dev/full"], None, "/dev/full"),
    (["send", "z" * 100_000, "--iface", "tx", "--dry-run"], 2, "invalid MAC"),
])
def test_bad_input_is_one_line_with_its_exit_code(veth, argv, code, message) -> None:
    with Capture(veth, "rx") as rx:
        result = cli([*argv, *QUICK], netns=veth)
        assert rarp_frames(rx, 0) == 0
    line = one_line(result)
    assert message in line and len(line) < 300, line[:500]
    assert result.returncode == code if code is not None else result.returncode in (1, 2)


def test_a_full_pcap_disk_is_a_failure_of_the_run(tmp_path) -> None:
    result = cli(["send", MAC, "--iface", "tx", "--pcap", "/dev/full", *QUICK])
    one_line(result)
    assert result.returncode == 1


@pytest.mark.parametrize("core", ["00:00:00:00:00:00", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff"])
def test_a_100kb_padded_mac_is_not_echoed_whole(core) -> None:
    padded = " " * 50_000 + core + " " * 50_000
    result = cli(["send", padded, "--iface", "tx", "--dry-run", *QUICK])
    assert result.returncode == 2
    assert len(one_line(result)) < 300


@pytest.mark.parametrize("command", [
    ["send", MAC, "--iface", "tx", "--dry-run"],
    ["daemon", "--connect", "test:///default", "--control-socket", "/nonexistent/rarp-c.sock", "--state-dir", "/nonexistent/rarp-s"],
    ["status"],  # the config is read for its control_socket
])
def test_a_config_nested_100k_deep_is_one_line_exit_2(tmp_path, command) -> None:
    config = tmp_path / "nested.toml"
    config.write_text(NESTED_TOML)
    result = cli([*command, "--config", str(config)])
    assert result.returncode == 2
    assert "nests tables or arrays too deeply" in one_line(result)


def test_send_json_to_a_full_stdout_sends_every_frame_then_says_so(veth) -> None:
    with Capture(veth, "rx") as rx:
        result = cli(["send", MAC, "--iface", "tx", "--json", *QUICK], netns=veth, shell_suffix=">/dev/full")
        assert rarp_frames(rx, 3) == 3
    assert result.returncode == 1
    assert "cannot write the output: No space left on device" in one_line(result)


def test_targets_to_a_full_stdout_is_one_line_exit_1() -> None:
    result = cli(["targets", "--connect", "test:///default", "--domain", "test"], shell_suffix=">/dev/full")
    assert result.returncode == 1
    assert "cannot write the output: No space left on device" in one_line(result)


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_send_with_stdout_closed_sends_every_frame_and_exits_0(veth, extra) -> None:
    with Capture(veth, "rx") as rx:
        result = cli(["send", MAC, "--iface", "tx", *extra, *QUICK], netns=veth, shell_suffix=">&-")
        assert rarp_frames(rx, 3) == 3
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""


@pytest.mark.parametrize("argv, code", [
    (["send", "zz", "--iface", "tx", "--dry-run"], 2),  # input error, said by fail()
    (["send", "--bogus"], 2),  # usage error, said by _App
    ([], 2),  # the bare command's help
    (["status", "--control-socket", "/nonexistent/rarp-c.sock"], 1),  # failure of the run
])
@pytest.mark.parametrize("stderr", ["full", "closed-pipe"])
def test_an_error_that_cannot_be_written_keeps_its_exit_code(argv, code, stderr) -> None:
    """stderr on a full disk, or a pipe whose reader left: the line is lost, the exit code is not."""
    import os

    if stderr == "full":
        result = cli(argv, shell_suffix="2>/dev/full")
    else:
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            result = subprocess.run([*CLI, *argv], stdout=subprocess.DEVNULL, stderr=write_end, timeout=60, cwd=ROOT)
        finally:
            os.close(write_end)
    assert result.returncode == code

"""The project's own exceptions; the CLI turns each into a one-line message and an exit code."""

from __future__ import annotations


class AnnounceError(Exception):
    """A runtime failure (missing device, no permission, libvirt unreachable): exit code 1."""

    exit_code = 1


class InputError(AnnounceError, ValueError):
    """Bad input from the operator or a document (MAC, VLAN, schedule, XML, config): exit code 2."""

    exit_code = 2


class DeviceError(AnnounceError):
    """A host device cannot carry frames right now; names the device so a log line says which."""

    def __init__(self, device: str, reason: str) -> None:
        super().__init__(f"device {device!r}: {reason}")
        self.device = device
        self.reason = reason

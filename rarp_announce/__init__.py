"""rarp-announce: QEMU-style RARP announcements for live-migrated libvirt guests."""

__version__ = "0.1.0"

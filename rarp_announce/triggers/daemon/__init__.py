"""The long-running announcer of a hypervisor host: see service.Daemon."""

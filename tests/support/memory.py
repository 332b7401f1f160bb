"""A server process's memory as Linux reports it, for the tests that bound it."""

from __future__ import annotations

from pathlib import Path


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (``VmRSS``) or its peak (``VmHWM``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak_mb(pid: int) -> float:
    """Forgets the process's peak RSS (Linux ``clear_refs`` 5), so that the next peak is the
    caller's; returns the RSS it starts from. An earlier test's peak would hide a smaller one."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return memory_mb(pid)

"""Shared helpers for the benchmarks: machine facts, result tables, JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"

__all__ = ["ROOT", "SHARED", "RESULTS", "machine", "print_table", "write_json", "percentile", "free_port", "pss_mb",
           "child_pids"]


def machine() -> dict[str, Any]:
    """CPU model, core count, memory: the context every number needs."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 0
    from birdclf.serving.predictor import available_cpus

    flags: list[str] = []
    try:  # the vector units decide onnxruntime's speed, and INT8's precision (u8s8 saturates without VNNI)
        line = next(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
        flags = sorted(f for f in line.split(":", 1)[1].split()
                       if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_flags": flags, "cpus": available_cpus(), "memory_gib": round(mem, 1),
            "python": platform.python_version(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def free_port() -> int:
    """An unused TCP port on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pss_mb(pid: int) -> float:
    """A process's proportional set size in MB (shared pages split between their users); 0 once it is gone."""
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def child_pids(pid: int) -> list[int]:
    """The process's children (Voila's kernels)."""
    import subprocess

    return [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100)."""
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain fixed-width table."""
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return "-" if v is None else str(v)


def write_json(name: str, data: Any) -> Path:
    """bench/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path

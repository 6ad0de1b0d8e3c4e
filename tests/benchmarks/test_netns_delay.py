"""The propagation delay of the benchmarks' shaped switch (``netns.LinkShape(delay_ms=)``,
``sync.py --delay``): validated, recorded, and (as root) really on the wire: a round trip
between two ranks takes at least twice the one-way delay."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

_ECHO = """
import socket, sys, time
addr = sys.argv[2]
if sys.argv[1] == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 5598)); s.listen(1); print("up", flush=True)
    c, _ = s.accept()
    while (b := c.recv(1)):
        c.sendall(b)
else:
    c = socket.create_connection((addr, 5598), timeout=10)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts = []
    for _ in range(5):
        t0 = time.perf_counter(); c.sendall(b"x"); c.recv(1)
        rtts.append(time.perf_counter() - t0)
    print(min(rtts) * 1000)
"""


def _load(name: str) -> ModuleType:
    """Import benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"tenfold_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_the_delay_is_validated_and_off_by_default() -> None:
    netns = _load("netns")
    assert netns.LinkShape().delay_ms == 0.0
    assert netns.LinkShape(delay_ms=12.5).delay_ms == 12.5
    with pytest.raises(ValueError, match="delay_ms"):
        netns.LinkShape(delay_ms=-1.0)
    with pytest.raises(ValueError, match="bus has no delay line"):
        netns.build_bus(world_size=2, shape=netns.LinkShape(delay_ms=5.0))


def test_sync_passes_the_delay_through_and_records_it() -> None:
    sync = _load("sync")
    parse = sync.build_parser().parse_args
    plain = sync.config_from_args(parse(["--networks", "switch"]))
    assert plain.shape.delay_ms == 0.0 and plain.shape_for("1gbit").delay_ms == 0.0
    cfg = sync.config_from_args(parse(["--networks", "switch", "--delay", "10"]))
    assert cfg.shape.delay_ms == 10.0 and cfg.shape_for("10gbit").delay_ms == 10.0
    # a delayed run never resumes from an undelayed one's launches
    assert sync._fingerprint(cfg) != sync._fingerprint(plain)
    with pytest.raises(ValueError, match="only the switch"):
        sync.config_from_args(parse(["--networks", "switch,bus", "--delay", "10"]))


def test_a_round_trip_through_the_delayed_switch_takes_twice_the_delay() -> None:
    netns = _load("netns")
    reason = netns.netns_available()
    if reason:
        pytest.skip(reason)
    topo = netns.build_switch(world_size=2, shape=netns.LinkShape(delay_ms=10.0))
    try:
        a, b = topo.placements
        server = subprocess.Popen(
            [*b.exec_prefix(), sys.executable, "-c", _ECHO, "server", b.address],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "up"
            out = subprocess.run(
                [*a.exec_prefix(), sys.executable, "-c", _ECHO, "client", b.address],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
        finally:
            server.kill()
            server.wait()
        assert float(out.stdout) >= 19.0  # 2 x 10 ms (the delay can only add)
    finally:
        assert netns.teardown(topo) == []

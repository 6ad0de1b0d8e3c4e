"""Private, shaped networks for benchmarks: Linux network namespaces, veths, a bridge, ``tc tbf``.

Nothing here touches the host's own network: every interface is created *directly inside*
namespaces this module creates (``ip link add ... netns NS``), addresses are 10.77.0.x on
those interfaces only, and no route leads out of them, so no packet can leave the machine.

Three placements of K ranks (see :func:`loopback`, :func:`build_switch`, :func:`build_bus`):

* ``loopback`` - the host's own ``lo``, unshaped (no namespace, no root needed).
* ``switch``   - a switched cluster of 1 GbE hosts: rank i in namespace ``<prefix>-r<i>``
  with ``eth0`` = 10.77.0.(11+i)/24, a veth to a port ``p<i>`` of bridge ``br0`` in namespace
  ``<prefix>-sw``. Both ends of every veth carry a ``tbf`` qdisc at the link rate, so each
  rank has rate up AND rate down (full duplex), like a host on a non-blocking switch.
  With ``LinkShape(delay_ms=D)`` the bridge is replaced by a **delay line**: a small
  process in the switch namespace (:func:`relay`, AF_PACKET sockets on the ports) that
  forwards every frame to the port of its destination MAC D ms after it came in, so the
  one-way delay between two ranks is D and the round trip 2D (the kernels here have no
  ``netem``; the tbf qdiscs stay as they are).
* ``bus``      - one shared medium: all ranks in namespace ``<prefix>-bus``, talking over its
  ``lo`` with a ``tbf`` qdisc at the link rate. Every byte any rank sends to any other
  crosses that one queue: K ranks share ``rate`` in total (closer to the paper's 5 GPUs
  behind one PCIe bus than the switch is). No delay (``delay_ms`` must be 0).

Namespaces are named ``tfsync<pid>-...`` after the process that made them, so
:func:`cleanup_stale` can remove those left behind by a killed run (its pid is gone)
without touching a concurrent run's. Requires root and iproute2 (``ip``, ``tc``).

Example (as root)::

    topo = build_switch(world_size=4, shape=LinkShape(rate="1gbit"))
    try:
        for p in topo.placements:
            print(p.rank, p.netns, p.ifname, p.address)  # run rank p.rank under p.exec_prefix()
    finally:
        teardown(topo)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "NAMESPACE_PREFIX",
    "LinkShape",
    "NetnsError",
    "Placement",
    "Topology",
    "build_bus",
    "build_switch",
    "cleanup_stale",
    "loopback",
    "netns_available",
    "relay",
    "teardown",
]

#: Every namespace this module creates starts with this, then the creating pid.
NAMESPACE_PREFIX = "tfsync"

#: The private subnet of the switch topology (never routed anywhere).
SUBNET = "10.77.0"

# Each ip/tc call is a quick netlink request; a bound keeps a wedged call from hanging a run.
_CMD_TIMEOUT_S = 15.0
_RATE_RE = re.compile(r"^\d+(\.\d+)?([kmgt]?bit|[kmgt]?bps)$", re.IGNORECASE)
_SIZE_RE = re.compile(r"^\d+(\.\d+)?([kmg]?b?|[kmg]bit)?$", re.IGNORECASE)
_TIME_RE = re.compile(r"^\d+(\.\d+)?(s|ms|us)$", re.IGNORECASE)


class NetnsError(RuntimeError):
    """An ``ip``/``tc`` command failed (message holds the command and its stderr)."""


@dataclass(frozen=True, kw_only=True)
class LinkShape:
    """A token-bucket link, as ``tc qdisc add ... tbf rate R burst B latency L``, with an
    optional propagation delay (the switch's delay line).

    Attributes:
        rate: link rate in tc syntax, e.g. ``"1gbit"`` (tbf counts whole frames: Ethernet,
            IP and TCP headers included, so TCP goodput is ~95% of it).
        burst: bucket size in tc syntax (bytes), e.g. ``"256kb"``; must exceed the largest
            packet the device hands to the qdisc (64 KiB GSO super-packets on veth and lo),
            and ~1 ms worth at 1 Gbit/s keeps the shaping smooth.
        latency: the longest a packet may wait in the tbf queue (sets the queue length);
            it is a buffer bound, not an added propagation delay.
        delay_ms: one-way propagation delay between two ranks in milliseconds (0: none,
            a plain bridge, as before). A long link (10-25 ms between data centres) makes
            every round trip of the protocol visible.
    """

    rate: str = "1gbit"
    burst: str = "256kb"
    latency: str = "20ms"
    delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if not _RATE_RE.match(self.rate):
            raise ValueError(f"rate: {self.rate!r} is not a tc rate like '1gbit'")
        if not _SIZE_RE.match(self.burst):
            raise ValueError(f"burst: {self.burst!r} is not a tc size like '256kb'")
        if not _TIME_RE.match(self.latency):
            raise ValueError(f"latency: {self.latency!r} is not a tc time like '20ms'")
        if not 0.0 <= self.delay_ms <= 10_000.0:
            raise ValueError(f"delay_ms: {self.delay_ms} not in [0, 10000]")

    def tbf_args(self) -> list[str]:
        """The ``tc qdisc add dev X root`` tail: ``["tbf", "rate", ..., "latency", ...]``."""
        return ["tbf", "rate", self.rate, "burst", self.burst, "latency", self.latency]


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where one rank runs and which interface its gloo sockets bind to.

    Attributes:
        rank: the rank.
        netns: its network namespace, or None for the host's.
        ifname: the interface for ``GLOO_SOCKET_IFNAME``.
        address: that interface's IPv4 address.
        dedicated_interface: True when only this rank's traffic crosses ``ifname`` (its
            byte counters then measure exactly what this rank sent).
    """

    rank: int
    netns: str | None
    ifname: str
    address: str
    dedicated_interface: bool

    def exec_prefix(self) -> list[str]:
        """argv prefix that runs a command in this rank's namespace (empty for the host)."""
        return [] if self.netns is None else ["ip", "netns", "exec", self.netns]


@dataclass(frozen=True, kw_only=True)
class Topology:
    """K placements plus what was created for them (to tear down).

    Attributes:
        name: ``"loopback"``, ``"switch"`` or ``"bus"``.
        description: one paragraph for the report.
        placements: one per rank, in rank order.
        namespaces: every namespace created (deleting them deletes their interfaces).
        shape: the link shaping applied (None for loopback).
        qdiscs: ``"<netns>:<dev>"`` of every tbf installed.
        relays: pids of the delay line processes (``delay_ms`` > 0), stopped by
            :func:`teardown`.
    """

    name: str
    description: str
    placements: tuple[Placement, ...]
    namespaces: tuple[str, ...] = ()
    shape: LinkShape | None = None
    qdiscs: tuple[str, ...] = field(default_factory=tuple)
    relays: tuple[int, ...] = ()


def _run(argv: Sequence[str]) -> str:
    """Run one iproute2 command; raise :class:`NetnsError` with its stderr on failure."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=_CMD_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def netns_available() -> str | None:
    """None if namespaces can be built here, else the reason (not root, no ``ip``/``tc``)."""
    if os.geteuid() != 0:
        return "shaped networks need root (ip netns, tc); run as root or use --networks loopback"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"'{tool}' not found: install iproute2 (apt-get install -y iproute2)"
    return None


def _prefix(owner_pid: int | None) -> str:
    return f"{NAMESPACE_PREFIX}{os.getpid() if owner_pid is None else owner_pid}"


def _add_netns(name: str, created: list[str]) -> None:
    _run(["ip", "netns", "add", name])
    created.append(name)
    _run(["ip", "-n", name, "link", "set", "lo", "up"])


def loopback(world_size: int) -> Topology:
    """K ranks on the host's unshaped ``lo`` (127.0.0.1); nothing is created."""
    placements = tuple(
        Placement(rank=r, netns=None, ifname="lo", address="127.0.0.1", dedicated_interface=False)
        for r in range(world_size)
    )
    return Topology(
        name="loopback",
        description=(
            "all ranks in the host's network namespace over its unshaped loopback (lo); "
            "bandwidth is bounded by CPU/memory copies only"
        ),
        placements=placements,
    )


def build_switch(*, world_size: int, shape: LinkShape, owner_pid: int | None = None) -> Topology:
    """Rank i in its own namespace with a ``shape``-limited veth to a bridge namespace.

    Each veth is shaped at both ends (rank egress = upload, bridge-port egress = download),
    so every rank has a full-duplex link of ``shape.rate``, like 1 GbE hosts on a switch.
    On failure everything created so far is deleted before the error propagates.
    """
    if not 2 <= world_size <= 200:
        raise ValueError(f"world_size: {world_size} not in [2, 200] (10.77.0.11+i addressing)")
    prefix = _prefix(owner_pid)
    switch = f"{prefix}-sw"
    created: list[str] = []
    qdiscs: list[str] = []
    placements: list[Placement] = []
    relays: list[int] = []
    try:
        _add_netns(switch, created)
        _run(["ip", "-n", switch, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", switch, "link", "set", "br0", "up"])
        for rank in range(world_size):
            ns = f"{prefix}-r{rank}"
            _add_netns(ns, created)
            port = f"p{rank}"
            # Created directly inside the two namespaces under a temporary unique name (the
            # host never sees it), then renamed eth0 inside the rank's namespace.
            tmp = f"tfv{os.getpid() % 100000}r{rank}"[:15]
            _run(
                ["ip", "link", "add", tmp, "netns", ns, "type", "veth"]
                + ["peer", "name", port, "netns", switch]
            )
            _run(["ip", "-n", ns, "link", "set", tmp, "name", "eth0"])
            address = f"{SUBNET}.{11 + rank}"
            _run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            if not shape.delay_ms:
                _run(["ip", "-n", switch, "link", "set", port, "master", "br0"])
            _run(["ip", "-n", switch, "link", "set", port, "up"])
            for where, dev in ((ns, "eth0"), (switch, port)):
                _run(["tc", "-n", where, "qdisc", "add", "dev", dev, "root", *shape.tbf_args()])
                qdiscs.append(f"{where}:{dev}")
            placements.append(
                Placement(
                    rank=rank, netns=ns, ifname="eth0", address=address, dedicated_interface=True
                )
            )
        if shape.delay_ms:
            relays.append(_start_relay(switch, [f"p{r}" for r in range(world_size)], shape))
    except BaseException:
        _stop(relays)
        _delete(created)
        raise
    return Topology(
        name="switch",
        description=(
            f"switched cluster: each rank in its own network namespace with a veth "
            f"({SUBNET}.11+rank/24) to a Linux bridge in a separate namespace; tbf "
            f"rate {shape.rate} burst {shape.burst} latency {shape.latency} on both ends of "
            f"every veth, i.e. {shape.rate} up and {shape.rate} down per rank (full duplex), "
            + (
                f"{shape.delay_ms:g} ms one-way propagation delay (round trip "
                f"{2 * shape.delay_ms:g} ms): a delay line process forwards the frames "
                "between the ports in place of the bridge"
                if shape.delay_ms
                else "no added propagation delay"
            )
        ),
        placements=tuple(placements),
        namespaces=tuple(created),
        shape=shape,
        qdiscs=tuple(qdiscs),
        relays=tuple(relays),
    )


def build_bus(*, world_size: int, shape: LinkShape, owner_pid: int | None = None) -> Topology:
    """All ranks in one namespace whose ``lo`` is shaped: K ranks share one ``shape.rate``."""
    if world_size < 2:
        raise ValueError(f"world_size: {world_size} < 2")
    if shape.delay_ms:
        raise ValueError("delay_ms: the bus has no delay line (use the switch)")
    ns = f"{_prefix(owner_pid)}-bus"
    created: list[str] = []
    try:
        _add_netns(ns, created)
        _run(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", *shape.tbf_args()])
    except BaseException:
        _delete(created)
        raise
    placements = tuple(
        Placement(rank=r, netns=ns, ifname="lo", address="127.0.0.1", dedicated_interface=False)
        for r in range(world_size)
    )
    return Topology(
        name="bus",
        description=(
            "shared bus: all ranks in one network namespace talking over its loopback, "
            f"shaped by tbf rate {shape.rate} burst {shape.burst} latency {shape.latency}; "
            f"every byte between any two ranks crosses that one queue, so the ranks share "
            f"{shape.rate} in total (lo MTU 65536)"
        ),
        placements=placements,
        namespaces=(ns,),
        shape=shape,
        qdiscs=(f"{ns}:lo",),
    )


def _delete(namespaces: Sequence[str]) -> list[str]:
    """Delete namespaces (their veths go with them); return the errors, never raise."""
    errors: list[str] = []
    for ns in reversed(list(namespaces)):
        try:
            _run(["ip", "netns", "delete", ns])
        except NetnsError as exc:
            errors.append(str(exc))
    return errors


def teardown(topology: Topology) -> list[str]:
    """Delete every namespace of ``topology``; idempotent; returns errors instead of raising.

    Processes still running inside would keep a namespace alive after its name is gone:
    stop the ranks first (the delay lines are stopped here).
    """
    _stop(topology.relays)
    existing = set(_list_namespaces())
    return _delete([ns for ns in topology.namespaces if ns in existing])


def _list_namespaces() -> list[str]:
    try:
        out = _run(["ip", "netns", "list"])
    except NetnsError:
        return []
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Delete ``tfsync<pid>-*`` namespaces whose creating process is gone; return their names.

    Only namespaces of dead runs are touched: a concurrent live run keeps its own.
    """
    stale = []
    pattern = re.compile(rf"^{NAMESPACE_PREFIX}(\d+)-")
    for ns in _list_namespaces():
        m = pattern.match(ns)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            stale.append(ns)
    _delete(stale)
    return stale


# ---- the delay line ------------------------------------------------------------------------

_SOL_PACKET = 263
_PACKET_VNET_HDR = 15  # frames carry virtio_net_hdr: GSO and checksum offload survive
_PACKET_IGNORE_OUTGOING = 23
_PACKET_OUTGOING = 4
_ETH_P_ALL = 0x0003
_VNET_HDR_BYTES = 10
_READY = "relay ready"


def _start_relay(netns: str, ports: Sequence[str], shape: LinkShape) -> int:
    """Start :func:`relay` in ``netns`` on ``ports``; its pid once it is forwarding."""
    argv = ["ip", "netns", "exec", netns, sys.executable, os.path.abspath(__file__), "relay"]
    argv += ["--delay-ms", f"{shape.delay_ms:g}", "--ports", ",".join(ports)]
    argv += ["--parent", str(os.getpid())]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # bounded: the relay exits if it cannot bind
    if line != _READY:
        proc.kill()
        err = proc.stderr.read() if proc.stderr is not None else ""
        raise NetnsError(f"delay line in {netns}: {line or 'no output'} {err.strip()}")
    proc.stdout.close()
    return proc.pid


def _stop(pids: Sequence[int]) -> None:
    """Stop delay lines this module started (by pid), waiting for each to exit."""
    for pid in pids:
        try:
            os.kill(pid, 15)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def relay(ports: Sequence[str], delay_ms: float, parent: int | None = None) -> None:
    """Forward Ethernet frames between ``ports`` (a learning switch), each ``delay_ms``
    after it arrived; runs until killed or until ``parent`` exits.

    One AF_PACKET socket per port (with virtio-net headers, so a 64 KB GSO frame with a
    partial checksum is forwarded as it is); a reader thread per port queues each frame
    for its destination's port (every other port while the MAC is unknown or broadcast),
    a writer thread per port sends it when it is due. The queues are FIFO: one constant
    delay keeps the order.
    """
    delay = delay_ms / 1000.0
    socks: dict[str, socket.socket] = {}
    for port in ports:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        s.setsockopt(_SOL_PACKET, _PACKET_VNET_HDR, 1)
        # (an old kernel refuses: outgoing frames are then skipped by their packet type)
        with contextlib.suppress(OSError):
            s.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
        s.bind((port, 0))
        socks[port] = s
    where: dict[bytes, str] = {}
    queues = {p: collections.deque[tuple[float, bytes]]() for p in ports}
    ready = {p: threading.Condition() for p in ports}

    def read(port: str) -> None:
        sock = socks[port]
        while True:
            data, addr = sock.recvfrom(1 << 18)
            due = time.monotonic() + delay
            if addr[2] == _PACKET_OUTGOING or len(data) < _VNET_HDR_BYTES + 14:
                continue
            dst = data[_VNET_HDR_BYTES : _VNET_HDR_BYTES + 6]
            where[data[_VNET_HDR_BYTES + 6 : _VNET_HDR_BYTES + 12]] = port
            out = where.get(dst) if not dst[0] & 1 else None
            for q in [out] if out is not None else [p for p in ports if p != port]:
                with ready[q]:
                    queues[q].append((due, data))
                    ready[q].notify()

    def write(port: str) -> None:
        sock, queue, cond = socks[port], queues[port], ready[port]
        while True:
            with cond:
                while not queue:
                    cond.wait()
                due, data = queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with contextlib.suppress(OSError):  # a full queue drops it, as a switch would
                sock.send(data)

    for port in ports:
        for fn in (read, write):
            threading.Thread(target=fn, args=(port,), daemon=True).start()
    print(_READY, flush=True)
    while parent is None or os.getppid() == parent:
        time.sleep(0.5)


def _main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="netns helpers: the switch's delay line")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("relay", help="forward frames between ports after a delay")
    r.add_argument("--ports", required=True, help="comma-separated interfaces")
    r.add_argument("--delay-ms", type=float, required=True)
    r.add_argument("--parent", type=int, help="exit when this process is gone")
    args = p.parse_args(argv)
    relay(args.ports.split(","), args.delay_ms, args.parent)


if __name__ == "__main__":
    _main()

"""NUMA topology: which CPUs and how much memory each node has, and how far apart nodes are.

Read from Linux's ``<root>/devices/system/node/node*/{cpulist,distance,meminfo}``; the caller
passes ``root`` (``veda.hardware.topology`` passes the configured ``sysfs_root``).  Where there
is no node folder (macOS, Windows, containers that hide ``/sys``), the topology is one node
holding every CPU this process may run on, with a ``reason`` saying why.

The public face of this module is :func:`veda.hardware.topology`.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass
from pathlib import Path

from veda.errors import ConfigError

__all__ = ["MAX_CPU_ID", "Node", "Topology", "format_cpulist", "parse_cpulist", "read_topology"]

_NODE = re.compile(r"node(\d+)")
_MEMTOTAL = re.compile(r"MemTotal:\s*(\d+)\s*kB")


#: The largest CPU id a CPU list may hold.  Linux's ``CONFIG_NR_CPUS`` goes up to 8192 (x86-64
#: with ``MAXSMP``), so 65536 leaves an eightfold margin
#: for kernels to come, and a list of every id up to it expands in about a millisecond.  A bound
#: from ``os.cpu_count()`` would be wrong here: ``root`` may be another machine's sysfs tree,
#: and a container's count says nothing about the ids the kernel numbers its CPUs with.  A
#: damaged list such as ``0-2000000000`` is refused instead of being expanded for minutes.
MAX_CPU_ID = (1 << 16) - 1

_RANGE = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")


def parse_cpulist(text: str) -> tuple[int, ...]:
    """The CPUs of a Linux CPU list such as ``"0-3,8-11"``, sorted (an empty list is ``()``).

    Raises ValueError for text that is not a CPU list, or that names a CPU past
    :data:`MAX_CPU_ID`.

    >>> parse_cpulist("0-3,8-11\\n")
    (0, 1, 2, 3, 8, 9, 10, 11)
    >>> parse_cpulist("5"), parse_cpulist("")
    ((5,), ())
    """
    ranges: list[tuple[int, int]] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        match = _RANGE.fullmatch(part)
        if match is None:
            raise ValueError(f"not a CPU range: {part[:40]!r}")
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if last < first:
            raise ValueError(f"not a CPU range: {part!r}")
        if last > MAX_CPU_ID:
            raise ValueError(f"CPU {last} is past the largest CPU id veda reads ({MAX_CPU_ID})")
        ranges.append((first, last))
    # Ranges merged before they are expanded: the work is the number of CPUs, not the number
    # of ranges times their lengths (a list repeating 0-65535 a thousand times).
    cpus: list[int] = []
    end = -1
    for first, last in sorted(ranges):
        if last > end:
            cpus.extend(range(max(first, end + 1), last + 1))
            end = last
    return tuple(cpus)


def format_cpulist(cpus: tuple[int, ...]) -> str:
    """The short form of a set of CPUs, as Linux writes it.

    >>> format_cpulist((0, 1, 2, 3, 8, 10, 11))
    '0-3,8,10-11'
    """
    parts: list[str] = []
    run: list[int] = []
    for cpu in sorted(cpus):
        if run and cpu == run[-1] + 1:
            run.append(cpu)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [cpu]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


@dataclass(frozen=True, repr=False)
class Node:
    """One NUMA node.

    Attributes
    ----------
    id : int
        The node's number (``nodeN``).
    cpus : tuple of int
        Its CPUs; empty for a memory-only node.
    memory_bytes : int or None
        Its memory (``MemTotal``), None where the kernel did not say.
    distances : tuple of int
        The relative distance to every node, in node order (10 is local); empty where unknown.
    """

    id: int
    cpus: tuple[int, ...]
    memory_bytes: int | None
    distances: tuple[int, ...] = ()

    def __repr__(self) -> str:
        memory = "memory unknown" if self.memory_bytes is None else _gib(self.memory_bytes)
        distances = " ".join(map(str, self.distances)) or "unknown"
        cpus = format_cpulist(self.cpus) or "none"
        return f"node {self.id}: cpus {cpus}, {memory}, distances {distances}"


@dataclass(frozen=True, repr=False)
class Topology:
    """The machine's NUMA nodes, as :func:`veda.hardware.topology` reads them.

    Attributes
    ----------
    nodes : tuple of Node
        In node order.
    reason : str or None
        Why the nodes were not read from the kernel (one node stands for the machine then), or
        what in the kernel's files was missing or damaged and left out: a cpulist that is not
        a CPU list (or names a CPU past ``MAX_CPU_ID``), distances that are not a list or not
        one per node, CPUs listed in two nodes.  None when every file read as expected.
    """

    nodes: tuple[Node, ...]
    reason: str | None = None

    @property
    def cpus(self) -> tuple[int, ...]:
        """Every CPU of every node, sorted, each once (even one listed in two nodes)."""
        return tuple(sorted({c for n in self.nodes for c in n.cpus}))

    def node_of(self, cpu: int) -> Node | None:
        """The node that holds ``cpu``, or None."""
        return next((n for n in self.nodes if cpu in n.cpus), None)

    def __repr__(self) -> str:
        head = f"Topology: {len(self.nodes)} NUMA node{'s' if len(self.nodes) != 1 else ''}"
        if self.reason:
            head += f" ({self.reason})"
        return "\n".join([head, *(f"  {n!r}" for n in self.nodes)])

    def _repr_html_(self) -> str:
        rows = "".join(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
                n.id,
                html.escape(format_cpulist(n.cpus) or "none"),
                "?" if n.memory_bytes is None else html.escape(_gib(n.memory_bytes)),
                html.escape(" ".join(map(str, n.distances)) or "?"),
            )
            for n in self.nodes
        )
        note = f"<p>{html.escape(self.reason)}</p>" if self.reason else ""
        return (
            "<table><thead><tr><th>node</th><th>cpus</th><th>memory</th><th>distances</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>{note}"
        )


def _gib(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.1f} GiB"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def _this_process_cpus() -> tuple[int, ...]:
    if hasattr(os, "sched_getaffinity"):
        try:
            return tuple(sorted(os.sched_getaffinity(0)))
        except OSError:  # pragma: no cover - a kernel that refuses its own process
            pass
    return tuple(range(os.cpu_count() or 1))


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def read_topology(root: str | os.PathLike[str]) -> Topology:
    """The NUMA nodes under ``root`` (a sysfs tree, normally ``/sys``).

    A node whose ``meminfo`` is missing has ``memory_bytes`` None; one whose ``cpulist`` is
    missing, unreadable or damaged has no CPUs, and the topology's ``reason`` names it.  The
    ``reason`` also names distances that are not one per node (left out) and CPUs listed in
    two nodes.

    Raises
    ------
    veda.ConfigError
        When ``root`` is not a folder.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> node = tmp / "devices/system/node/node0"; node.mkdir(parents=True)
    >>> _ = (node / "cpulist").write_text("0-3\\n")
    >>> _ = (node / "distance").write_text("10\\n")
    >>> read_topology(tmp)
    Topology: 1 NUMA node
      node 0: cpus 0-3, memory unknown, distances 10
    """
    base = Path(os.fsdecode(root))
    if not base.is_dir():
        raise ConfigError(
            f"sysfs_root (root) {os.fsdecode(root)!r} is not a folder; set veda.config("
            "sysfs_root=...) or VEDA_SYSFS_ROOT to where the kernel's /sys is"
        )
    folder = base / "devices" / "system" / "node"
    found = []
    try:
        entries = list(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        entries = []
    for entry in entries:
        match = _NODE.fullmatch(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    if not found:
        return Topology(
            nodes=(Node(0, _this_process_cpus(), _total_memory(), (10,)),),
            reason=f"no NUMA information: {folder} has no node folders (not Linux, or a "
            "container that hides them); one node stands for the machine",
        )
    nodes = []
    problems = []
    for number, entry in sorted(found):
        path = entry / "cpulist"
        text = _read(path)
        try:
            cpus = parse_cpulist(text) if text is not None else ()
            if text is None:
                problems.append(f"node{number} has no cpulist")
        except ValueError as exc:
            cpus = ()
            problems.append(
                f"node{number}'s cpulist {_short(text)} is not a CPU list ({exc}); its CPUs "
                f"are left out (file {path})"
            )
        meminfo = _read(entry / "meminfo")
        found_mem = _MEMTOTAL.search(meminfo) if meminfo else None
        memory = int(found_mem.group(1)) * 1024 if found_mem else None
        distance = _read(entry / "distance")
        try:
            distances = tuple(int(d) for d in distance.split()) if distance else ()
            if any(d < 0 for d in distances):
                raise ValueError("a negative distance")
        except ValueError:
            distances = ()
            problems.append(f"node{number}'s distance {_short(distance)} is not a list")
        nodes.append(Node(number, cpus, memory, distances))
    for k, node in enumerate(nodes):
        if node.distances and len(node.distances) != len(nodes):
            problems.append(
                f"node{node.id}'s distance holds {len(node.distances)} values for {len(nodes)} "
                f"nodes; left out (file {folder / f'node{node.id}' / 'distance'})"
            )
            nodes[k] = Node(node.id, node.cpus, node.memory_bytes, ())
    owner: dict[int, int] = {}
    twice: dict[tuple[int, int], list[int]] = {}
    for node in nodes:
        for cpu in node.cpus:
            first = owner.setdefault(cpu, node.id)
            if first != node.id:
                twice.setdefault((first, node.id), []).append(cpu)
    for (first, second), cpus in twice.items():
        problems.append(
            f"cpus {format_cpulist(tuple(cpus))} are listed in both node{first} and "
            f"node{second}; node_of gives node{first}"
        )
    return Topology(nodes=tuple(nodes), reason="; ".join(problems) or None)


def _short(text: str | None, most: int = 60) -> str:
    """``text`` stripped, quoted, and cut to about ``most`` characters for a reason."""
    text = (text or "").strip()
    return repr(text) if len(text) <= most else f"{text[:most]!r}... ({len(text)} characters)"

"""NUMA topology read from sysfs (veda.hardware.topology), against fake trees and this machine."""

from __future__ import annotations

import os

import pytest

import veda
import veda.hardware
from veda._hardware.numa import Node, Topology, format_cpulist, parse_cpulist, read_topology


def _tree(root, nodes):
    """Write a fake ``devices/system/node`` tree: ``nodes`` maps a node number to a dict of
    file name -> text (a missing name: no such file)."""
    base = root / "devices" / "system" / "node"
    base.mkdir(parents=True)
    (base / "online").write_text(f"0-{max(nodes)}\n")  # not a node folder
    (base / "possible").write_text(f"0-{max(nodes)}\n")
    for number, files in nodes.items():
        folder = base / f"node{number}"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
    return root


def _meminfo(node, kib):
    return f"Node {node} MemTotal:       {kib} kB\nNode {node} MemFree:        1234 kB\n"


def test_one_node(tmp_path):
    _tree(tmp_path, {0: {"cpulist": "0-7\n", "distance": "10\n", "meminfo": _meminfo(0, 16384)}})
    topo = veda.hardware.topology(tmp_path)
    assert topo == Topology((Node(0, tuple(range(8)), 16384 * 1024, (10,)),))
    assert topo.reason is None
    assert "node 0: cpus 0-7" in repr(topo)


def test_two_nodes_with_distances(tmp_path):
    _tree(
        tmp_path,
        {
            1: {"cpulist": "4-7,12-15\n", "distance": "21 10\n", "meminfo": _meminfo(1, 2048)},
            0: {"cpulist": "0-3,8-11\n", "distance": "10 21\n", "meminfo": _meminfo(0, 1024)},
        },
    )
    topo = read_topology(tmp_path)
    assert [n.id for n in topo.nodes] == [0, 1]
    assert topo.nodes[0].cpus == (0, 1, 2, 3, 8, 9, 10, 11)
    assert topo.nodes[1].cpus == (4, 5, 6, 7, 12, 13, 14, 15)
    assert [n.distances for n in topo.nodes] == [(10, 21), (21, 10)]
    assert [n.memory_bytes for n in topo.nodes] == [1 << 20, 2 << 20]
    assert topo.cpus == tuple(range(16))
    assert topo.node_of(9).id == 0 and topo.node_of(12).id == 1 and topo.node_of(99) is None
    assert "<table>" in topo._repr_html_() and "4-7,12-15" in topo._repr_html_()


def test_four_nodes_in_number_order(tmp_path):
    distances = ["10 16 16 32", "16 10 32 16", "16 32 10 16", "32 16 16 10"]
    nodes = {
        k: {"cpulist": f"{8 * k}-{8 * k + 7}\n", "distance": distances[row] + "\n"}
        for row, k in enumerate(
            (0, 2, 3, 10)
        )  # node numbers need not be contiguous; 10 sorts after 3
    }
    for k in nodes:
        nodes[k]["meminfo"] = _meminfo(k, 1 << 20)
    _tree(tmp_path, nodes)
    topo = read_topology(tmp_path)
    assert [n.id for n in topo.nodes] == [0, 2, 3, 10]
    assert topo.nodes[3].cpus == tuple(range(80, 88))
    assert topo.nodes[0].distances == (10, 16, 16, 32)
    assert all(n.memory_bytes == 1 << 30 for n in topo.nodes)
    assert repr(topo).startswith("Topology: 4 NUMA nodes")


def test_missing_meminfo_and_odd_cpulists(tmp_path):
    _tree(
        tmp_path,
        {
            0: {"cpulist": " 0,2,4-5 ,7\n", "distance": "10 20 20\n"},  # no meminfo
            1: {
                "cpulist": "\n",
                "distance": "20 10 20\n",
                "meminfo": _meminfo(1, 4),
            },  # memory only
            2: {"cpulist": "3-1\n", "meminfo": "garbage\n"},  # no distance, bad list
        },
    )
    topo = read_topology(tmp_path)
    assert topo.nodes[0] == Node(0, (0, 2, 4, 5, 7), None, (10, 20, 20))
    assert topo.nodes[1].cpus == () and topo.nodes[1].memory_bytes == 4096
    assert topo.nodes[2] == Node(2, (), None, ())
    assert "node2" in topo.reason and "3-1" in topo.reason
    assert "memory unknown" in repr(topo) and "cpus none" in repr(topo)


def test_no_node_folder_is_one_node_with_a_reason(tmp_path):
    (tmp_path / "devices" / "system").mkdir(parents=True)  # a /sys without NUMA nodes
    topo = read_topology(tmp_path)
    assert len(topo.nodes) == 1
    expected = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if expected is not None:
        assert list(topo.nodes[0].cpus) == expected
    assert topo.reason and "no NUMA information" in topo.reason


def test_a_missing_root_is_a_config_error(tmp_path):
    with pytest.raises(veda.ConfigError, match="sysfs_root") as info:
        veda.hardware.topology(tmp_path / "nowhere")
    assert "nowhere" in str(info.value)


def test_root_none_reads_the_configured_sysfs_root(tmp_path):
    _tree(tmp_path, {0: {"cpulist": "0-41\n"}})
    with veda.config(sysfs_root=str(tmp_path)):
        assert veda.hardware.topology().nodes[0].cpus == tuple(range(42))


@pytest.mark.parametrize(
    "text, cpus",
    [("0-3,8-11", (0, 1, 2, 3, 8, 9, 10, 11)), ("0", (0,)), ("", ()), ("1,0,1", (0, 1))],
)
def test_cpulists_parse_and_format(text, cpus):
    assert parse_cpulist(text) == cpus
    assert parse_cpulist(format_cpulist(cpus)) == cpus


@pytest.mark.parametrize("text", ["a-b", "3-1", "-1", "1-"])
def test_a_bad_cpulist_is_refused(text):
    with pytest.raises(ValueError):
        parse_cpulist(text)


def test_this_machine():
    topo = veda.hardware.topology()
    shown = f"this machine's topology:\n{topo!r}"
    assert topo.nodes, shown
    assert len({n.id for n in topo.nodes}) == len(topo.nodes), shown
    cpus = topo.cpus
    assert len(cpus) == len(set(cpus)), shown  # no CPU in two nodes
    if hasattr(os, "sched_getaffinity"):
        assert set(os.sched_getaffinity(0)) <= set(cpus), shown
    for node in topo.nodes:
        assert not node.distances or len(node.distances) == len(topo.nodes), shown


def test_a_huge_cpulist_is_refused_at_once_and_named(tmp_path):
    """A damaged cpulist such as 0-2000000000 once took minutes to expand (0-20000000: 3 s)."""
    import time

    _tree(
        tmp_path,
        {
            0: {"cpulist": "0-2000000000\n", "distance": "10 20\n"},
            1: {"cpulist": "4-7\n", "distance": "20 10\n"},
        },
    )
    start = time.perf_counter()
    topo = veda.hardware.topology(tmp_path)
    assert time.perf_counter() - start < 2.0
    assert topo.nodes[0].cpus == () and topo.nodes[1].cpus == (4, 5, 6, 7)
    assert "node0" in topo.reason and "2000000000" in topo.reason
    assert str(tmp_path / "devices/system/node/node0/cpulist") in topo.reason


def test_cpu_ids_are_bounded_and_many_ranges_are_cheap():
    from veda._hardware.numa import MAX_CPU_ID

    assert parse_cpulist(f"0-{MAX_CPU_ID}") == tuple(range(MAX_CPU_ID + 1))
    with pytest.raises(ValueError, match=str(MAX_CPU_ID + 1)):
        parse_cpulist(f"0-{MAX_CPU_ID + 1}")
    with pytest.raises(ValueError):
        parse_cpulist("1" * 10_000)  # past int()'s digit limit, and past any CPU id
    assert parse_cpulist(",".join([f"0-{MAX_CPU_ID}"] * 2000)) == tuple(range(MAX_CPU_ID + 1))
    assert parse_cpulist("0-3,2-5,1,9") == (0, 1, 2, 3, 4, 5, 9)


@pytest.mark.parametrize("text", ["+3", "1 2", "\u0663", "0x3"])
def test_not_quite_numbers_are_not_cpus(text):
    with pytest.raises(ValueError):
        parse_cpulist(text)


def test_distances_not_one_per_node_are_named_and_left_out(tmp_path):
    _tree(
        tmp_path,
        {
            0: {"cpulist": "0-3\n", "distance": "10 20 30\n"},  # three values, two nodes
            1: {"cpulist": "4-7\n", "distance": "20 10\n"},
        },
    )
    topo = read_topology(tmp_path)
    assert topo.nodes[0].distances == () and topo.nodes[1].distances == (20, 10)
    assert "node0's distance" in topo.reason and "3 values for 2 nodes" in topo.reason


def test_cpus_listed_in_two_nodes_are_named(tmp_path):
    _tree(tmp_path, {0: {"cpulist": "0-5\n"}, 1: {"cpulist": "4-9\n"}})
    topo = read_topology(tmp_path)
    assert "4-5" in topo.reason and "node0" in topo.reason and "node1" in topo.reason
    assert topo.cpus == tuple(range(10)) and topo.node_of(4).id == 0


class _Folder:
    def __init__(self, path):
        self.path = path

    def __fspath__(self):
        return self.path


@pytest.mark.parametrize("call", ["topology", "energy_sources", "temperature"])
@pytest.mark.parametrize(
    "root, words",
    [
        (123, ["root", "folder's path", "int"]),
        (1.5, ["root", "float"]),
        (["/sys"], ["root", "list"]),
        ("/sys\0/x", ["root", "NUL"]),
        (b"/sys\0", ["root", "NUL"]),
        ("", ["root", "empty"]),
        (_Folder(42), ["root", "_Folder"]),
    ],
)
def test_a_bad_root_is_a_config_error_naming_root(call, root, words):
    with pytest.raises(veda.ConfigError) as info:
        getattr(veda.hardware, call)(root=root)
    for word in [*words, call]:
        assert word in str(info.value), str(info.value)


def test_bytes_and_path_like_roots_are_read(tmp_path):
    _tree(tmp_path, {0: {"cpulist": "0-1\n"}})
    for root in (os.fsencode(tmp_path), _Folder(str(tmp_path)), tmp_path):
        assert veda.hardware.topology(root).nodes[0].cpus == (0, 1)

"""Compute nodes as network namespaces: one bridge on the host (the login node), one
namespace with its own address per node, and their names in /etc/hosts.

slurmd runs inside with `nsenter --net`, not `ip netns exec`: the latter remounts /sys and
slurmd then finds no cgroup filesystem.
"""

from __future__ import annotations

from pathlib import Path

from .demo import Demo, NodeSpec
from .system import sh

HOSTS = Path("/etc/hosts")
BEGIN, END = "# BEGIN aifactory nodes", "# END aifactory nodes"


def netns_path(node: str) -> str:
    return f"/var/run/netns/{node}"


def _link_exists(name: str, netns: str | None = None) -> bool:
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    return sh(*prefix, "link", "show", name, check=False).returncode == 0


def ensure_bridge(demo: Demo) -> None:
    prefix = demo.subnet.prefixlen
    if not _link_exists(demo.bridge):
        sh("ip", "link", "add", demo.bridge, "type", "bridge")
    addrs = sh("ip", "-o", "-4", "addr", "show", "dev", demo.bridge).stdout
    if f"{demo.controller_address}/{prefix}" not in addrs:
        sh("ip", "addr", "add", f"{demo.controller_address}/{prefix}", "dev", demo.bridge)
    sh("ip", "link", "set", demo.bridge, "up")


def ensure_node_netns(demo: Demo, node: NodeSpec) -> None:
    ns = node.name
    host_if = f"veth-{ns}"[:15]
    if Path(netns_path(ns)).exists() and sh("ip", "-n", ns, "link", "show", "lo",
                                             check=False).returncode != 0:
        sh("ip", "netns", "delete", ns)  # a name left behind by a namespace that is gone
    if not Path(netns_path(ns)).exists():
        sh("ip", "netns", "add", ns)
    if not _link_exists(host_if):
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "link", "set", host_if, "master", demo.bridge)
    sh("ip", "link", "set", host_if, "up")
    addrs = sh("ip", "-n", ns, "-o", "-4", "addr", "show", "dev", "eth0").stdout
    if f"{node.address}/{demo.subnet.prefixlen}" not in addrs:
        sh("ip", "-n", ns, "addr", "add", f"{node.address}/{demo.subnet.prefixlen}", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    routes = sh("ip", "-n", ns, "route", "show", "default").stdout
    if demo.controller_address not in routes:
        sh("ip", "-n", ns, "route", "replace", "default", "via", demo.controller_address)


def hosts_block(demo: Demo) -> str:
    # The login node's cluster address too: Slurm 24.11 looks up the name of whoever sends it
    # a message, and from a node's namespace no DNS server answers (10 s per message).
    lines = [BEGIN, f"{demo.controller_address} aifactory-login"]
    lines += [f"{n.address} {n.name}" for n in demo.nodes]
    return "\n".join(lines + [END]) + "\n"


def ensure_hosts(demo: Demo) -> None:
    """Keep our block in /etc/hosts (written in place: in containers it is a bind mount)."""
    text = HOSTS.read_text()
    block = hosts_block(demo)
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        new = before + block + after
    else:
        new = text.rstrip("\n") + "\n" + block
    if new != text:
        with open(HOSTS, "w") as f:
            f.write(new)


def ensure_network(demo: Demo) -> None:
    ensure_bridge(demo)
    for node in demo.nodes:
        ensure_node_netns(demo, node)
    ensure_hosts(demo)

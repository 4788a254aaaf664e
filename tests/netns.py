"""A second "host" on this machine: a network namespace joined to the root namespace by a veth
pair, addressed from the RFC 5737 documentation ranges, with a hostname of its own (a UTS
namespace per command) so its supervisord names its workers ``worker-NN@<that host>``.

Needs root, iproute2 (``ip``) and util-linux (``unshare``); ``NetnsUnavailable`` says which is
missing so the caller can skip. ``Link.cut()`` sets the root-side veth down: the namespace's
packets are dropped silently (its TCP connections hang, as in a real partition) while the root
namespace still reaches its own address on that veth (its Redis and paper broker stay up for the
first host).
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

# RFC 5737: documentation-only ranges, never routed. The root side takes .1 of a /30, the namespace .2.
DOC_RANGES = ("198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24")
IFNAMSIZ = 15  # longest interface name


class NetnsUnavailable(Exception):
    """This machine does not allow the namespace (not root, no ip/unshare, or `ip netns add` fails)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {(result.stderr or result.stdout).strip()}")
    return result


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network of an address or a route of the root namespace."""
    found = []
    for args in (("-4", "-o", "addr", "show"), ("-4", "route", "show", "table", "all")):
        for word in _ip(*args, check=False).stdout.split():
            with contextlib.suppress(ValueError):
                if "/" in word or word.count(".") == 3:
                    found.append(ipaddress.ip_network(word, strict=False))
    return found


def free_doc_subnet(seed: int) -> ipaddress.IPv4Network:
    """A /30 of the RFC 5737 ranges overlapping no address or route here (the machine's own uplink
    may use one of these ranges), starting at a ``seed``-dependent place so parallel runs differ."""
    used = _networks_in_use()
    candidates = [net for block in DOC_RANGES for net in ipaddress.ip_network(block).subnets(new_prefix=30)]
    for n in range(len(candidates)):
        net = candidates[(seed + n) % len(candidates)]
        if not any(net.overlaps(other) for other in used if other.prefixlen > 0):
            return net
    raise NetnsUnavailable("no RFC 5737 /30 is free on this machine")


@dataclass
class Link:
    """The namespace ``name`` and its veth pair; ``root_ip`` is reachable from both sides."""

    name: str
    root_if: str
    ns_if: str
    root_ip: str
    ns_ip: str
    hostname: str

    def command(self, *args: str) -> list[str]:
        """``args`` run inside the namespace, under the namespace host's own hostname."""
        return ["ip", "netns", "exec", self.name, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
                self.hostname, *args]

    def cut(self) -> None:
        _ip("link", "set", self.root_if, "down")

    def restore(self) -> None:
        _ip("link", "set", self.root_if, "up")

    def pids(self) -> list[int]:
        """Every process in the namespace (all of them the caller's)."""
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(word) for word in out.split() if word.isdigit()]

    def kill_all(self) -> None:
        """SIGKILL every process left in the namespace."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def check_available() -> None:
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root")
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            raise NetnsUnavailable(f"no `{tool}` command on this machine")


@contextlib.contextmanager
def second_host(tag: str = "tb") -> Iterator[Link]:
    """Create the namespace and veth pair (names carry this pid), yield the Link, and always delete both."""
    check_available()
    pid = os.getpid()
    name = f"{tag}-host2-{pid}"
    root_if, ns_if = f"{tag}r{pid}"[:IFNAMSIZ], f"{tag}n{pid}"[:IFNAMSIZ]
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        raise NetnsUnavailable(f"`ip netns add` failed: {(made.stderr or made.stdout).strip()}")
    link = None
    try:
        net = free_doc_subnet(pid)
        root_ip, ns_ip = (str(host) for host in list(net.hosts())[:2])
        link = Link(name, root_if, ns_if, root_ip, ns_ip, hostname=f"host2-{pid}")
        _ip("link", "add", root_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{root_ip}/30", "dev", root_if)
        _ip("link", "set", root_if, "up")
        for args in (("addr", "add", f"{ns_ip}/30", "dev", ns_if), ("link", "set", ns_if, "up"),
                     ("link", "set", "lo", "up")):
            _ip("netns", "exec", name, "ip", *args)
        yield link
    finally:
        if link is not None:
            link.kill_all()
        _ip("link", "del", root_if, check=False)  # deletes both ends
        _ip("netns", "del", name, check=False)

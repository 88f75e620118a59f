"""An emulated network link between two benchmark ranks: two network namespaces joined by a
veth pair whose egress is shaped by a token-bucket filter (tc tbf) to ``gbit`` Gbit/s.

Why: over loopback a gloo transfer is a memcpy through the kernel, paid for by the same two
cores that run the model, so communication cannot overlap compute on this machine. Across a
rate-limited link the transfer time is set by the link, as on a real cluster, and what
prefetching and overlapped reduction hide becomes measurable. Linux only; needs root (or
CAP_NET_ADMIN) and iproute2; :func:`unavailable_reason` says why not otherwise.

Usage (in the parent, before spawning ranks)::

    with EmulatedLink(gbit=2.0) as link:
        mp.spawn(rank_main, args=(link.spec(),), nprocs=2)

and first thing in each rank: ``enter_link(spec, rank)``, which moves the process into its
namespace and sets MASTER_ADDR and GLOO_SOCKET_IFNAME.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass

_CLONE_NEWNET = 0x40000000
_SUBNET = "10.77.{}.{}"


@dataclass(frozen=True)
class LinkSpec:
    """What a rank needs to join the link: its namespace, interface and the peers' addresses."""

    namespaces: tuple[str, str]
    interfaces: tuple[str, str]
    addresses: tuple[str, str]
    gbit: float


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip() or done.stdout.strip()}")


def unavailable_reason() -> str | None:
    """Why an emulated link cannot be built here, or None if it can."""
    if not os.path.isdir("/proc/self/ns") or not hasattr(os, "geteuid"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces and tc need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"'{tool}' (iproute2) is not installed"
    return None


class EmulatedLink:
    """Creates the namespaces and the shaped veth pair on enter; removes them on exit."""

    def __init__(self, gbit: float, burst_kb: int = 256):
        if gbit <= 0:
            raise ValueError(f"--link-gbit must be positive (got {gbit})")
        self.gbit, self.burst_kb = gbit, burst_kb
        tag = uuid.uuid4().hex[:6]
        subnet = int(tag[:2], 16)  # another run's link on the same machine gets another subnet
        self._spec = LinkSpec((f"zl{tag}a", f"zl{tag}b"), (f"zl{tag}va", f"zl{tag}vb"),
                              (_SUBNET.format(subnet, 1), _SUBNET.format(subnet, 2)), gbit)

    def spec(self) -> LinkSpec:
        return self._spec

    def __enter__(self) -> "EmulatedLink":
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(f"cannot emulate a network link: {reason}")
        spec = self._spec
        try:
            for ns in spec.namespaces:
                _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", spec.interfaces[0], "type", "veth", "peer", "name", spec.interfaces[1])
            for ns, ifname, address in zip(spec.namespaces, spec.interfaces, spec.addresses):
                _run("ip", "link", "set", ifname, "netns", ns)
                _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", ifname)
                _run("ip", "-n", ns, "link", "set", ifname, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", ifname, "root", "tbf",
                     "rate", f"{self.gbit}gbit", "burst", f"{self.burst_kb}kb", "latency", "400ms")
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for ns in self._spec.namespaces:  # deleting a namespace deletes the veth end inside it
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def enter_link(spec: LinkSpec, rank: int) -> None:
    """Moves this process into rank ``rank``'s namespace (before any socket or thread exists)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/var/run/netns/{spec.namespaces[rank]}") as handle:
        if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {spec.namespaces[rank]} failed")
    os.environ["MASTER_ADDR"] = spec.addresses[0]
    os.environ["GLOO_SOCKET_IFNAME"] = spec.interfaces[rank]

"""No network for a process that reads untrusted files (the upload inspector child).

`deny_network()` installs two layers, first thing in the process:

1. The operating system's (Linux, best effort): move the process into a new, empty network
   namespace, where there is no interface but a loopback that is down, so nothing is
   reachable, native code included. Plain `unshare(CLONE_NEWNET)` needs CAP_SYS_ADMIN;
   without it the process asks for a new user namespace as well (mapping its own user and
   group, so files keep their owner), which most kernels allow unprivileged. Both need a
   single-threaded process and may be refused (seccomp, sysctls); the process then goes on
   with the second layer alone.
2. Python's, always: an audit hook, which cannot be removed once added, that raises
   `PermissionError` on socket creation, bind, connect, sends and name lookups. Python code
   that a hostile file reaches (a pickle's reduce, a converter calling back into Python)
   goes through these events; native code does not, which is what the first layer is for.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any, Literal

# Python 3.11 audit events that open, address or use a network socket, or resolve a name.
# (`socket.__new__` covers every new socket object, socketpair and fromfd included.)
NETWORK_EVENTS = frozenset(
    {
        "socket.__new__",
        "socket.bind",
        "socket.connect",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.getnameinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
    }
)
# From <sched.h>.
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

Isolation = Literal["network namespace", "user and network namespace", "none"]

_hook_installed = False


def deny_network() -> Isolation:
    """Cut this process off the network for good; returns which OS isolation it got (the
    audit hook is installed whatever it returns)."""
    isolation = _unshare_network()
    _install_audit_hook()
    return isolation


def _refuse_network(event: str, _args: tuple[Any, ...]) -> None:
    if event in NETWORK_EVENTS:
        raise PermissionError(f"network use is refused in this process ({event})")


def _install_audit_hook() -> None:
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_refuse_network)
        _hook_installed = True


def _unshare_network() -> Isolation:
    if not sys.platform.startswith("linux"):
        return "none"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return "none"
    if libc.unshare(CLONE_NEWNET) == 0:
        return "network namespace"
    # Read the ids before the new user namespace hides them (they read as 65534 inside
    # until the maps are written).
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        _map_own_ids(uid, gid)
        return "user and network namespace"
    return "none"


def _map_own_ids(uid: int, gid: int) -> None:
    """Map the caller's user and group into its new user namespace, so `getuid()` and new
    files' owners stay what they were. Best effort: without the maps, files are still read
    and written with the caller's real ids, only reported as 65534."""
    # setgroups must be denied before an unprivileged process may write gid_map.
    for name, text in (
        ("setgroups", "deny"),
        ("uid_map", f"{uid} {uid} 1\n"),
        ("gid_map", f"{gid} {gid} 1\n"),
    ):
        try:
            with open(f"/proc/self/{name}", "w") as fh:
                fh.write(text)
        except OSError:
            return

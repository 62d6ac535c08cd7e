"""The upload inspector child has no network: `worker.engine.sandbox.deny_network`.

Every check runs in a fresh Python child (the guard is for good in the process that installs
it, so never in the test process) against a listener this test owns on 127.0.0.1, and each
refusal is paired with the same call succeeding without the guard, so a test fails if the
guard stops working as well as if the call could never have worked.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.inspector import Inspector
from infra.sandbox import Sandbox
from tests.aio import run_coroutine
from tests.security import payloads

ROOT = Path(__file__).resolve().parents[2]
REFUSED = "network use is refused in this process"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(2)
        yield server


def _port(server: socket.socket) -> int:
    return server.getsockname()[1]


def _run(script: str, *args: object) -> dict:
    """Run `script` in a new interpreter; it prints one JSON object as its last line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def _received(server: socket.socket) -> bytes | None:
    """What the first client sent, or None when nobody connected."""
    try:
        conn, _ = server.accept()
    except TimeoutError:
        return None
    with conn:
        conn.settimeout(2)
        return conn.recv(16)


# A socket made before the guard, as a library could hold one: only the audit hook's
# `socket.connect` can stop it, since the socket lives in the original network namespace.
CONNECT = """
    import json, socket, sys
    from worker.engine.sandbox import deny_network
    sock = socket.socket()
    if sys.argv[2] == "guarded":
        deny_network()
    try:
        sock.connect(("127.0.0.1", int(sys.argv[1])))
        sock.sendall(b"hello")
        print(json.dumps({"outcome": "connected"}))
    except OSError as exc:
        print(json.dumps({"outcome": type(exc).__name__, "message": str(exc)}))
"""


def test_connect_to_localhost_works_without_the_guard(listener: socket.socket) -> None:
    assert _run(CONNECT, _port(listener), "open") == {"outcome": "connected"}
    assert _received(listener) == b"hello"


def test_guard_refuses_connect_to_localhost(listener: socket.socket) -> None:
    result = _run(CONNECT, _port(listener), "guarded")
    assert result == {"outcome": "PermissionError", "message": f"{REFUSED} (socket.connect)"}
    assert _received(listener) is None


EVERY_CALL = """
    import json, socket, sys
    from worker.engine.sandbox import deny_network
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if sys.argv[1] == "guarded":
        deny_network()
    calls = {
        "socket": lambda: socket.socket().close(),
        "socketpair": lambda: [s.close() for s in socket.socketpair()],
        "getaddrinfo": lambda: socket.getaddrinfo("localhost", 80),
        "gethostbyname": lambda: socket.gethostbyname("localhost"),
        "getnameinfo": lambda: socket.getnameinfo(("127.0.0.1", 80), 0),
        "gethostbyaddr": lambda: socket.gethostbyaddr("127.0.0.1"),
        "bind": lambda: udp.bind(("127.0.0.1", 0)),
        "sendto": lambda: udp.sendto(b"x", ("127.0.0.1", 9)),
        "sendmsg": lambda: udp.sendmsg([b"x"], [], 0, ("127.0.0.1", 9)),
    }
    outcomes = {}
    for name, call in calls.items():
        try:
            call()
            outcomes[name] = "ok"
        except OSError as exc:
            outcomes[name] = type(exc).__name__
    print(json.dumps(outcomes))
"""


def test_guard_refuses_every_socket_entry_point() -> None:
    """Sockets, name lookups, bind and sends: each refused, and each working without it
    (`gethostbyaddr` may fail on a host without a name for 127.0.0.1, but not with
    PermissionError)."""
    open_outcomes = _run(EVERY_CALL, "open")
    assert "PermissionError" not in open_outcomes.values(), open_outcomes
    guarded = _run(EVERY_CALL, "guarded")
    assert guarded == {name: "PermissionError" for name in open_outcomes}


# Native code bypasses audit hooks: connect through libc, as a C extension would.
NATIVE_CONNECT = """
    import ctypes, json, socket, struct, sys
    from worker.engine.sandbox import deny_network
    isolation = deny_network() if sys.argv[2] == "guarded" else "none"
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    address = struct.pack("=HH4s8x", socket.AF_INET, socket.htons(int(sys.argv[1])),
                          socket.inet_aton("127.0.0.1"))
    failed = libc.connect(fd, address, len(address))
    errno = ctypes.get_errno() if failed else 0
    if not failed:
        libc.send(fd, b"native", 6, 0)
    print(json.dumps({"isolation": isolation, "fd_ok": fd >= 0, "errno": errno}))
"""


def test_native_connect_is_cut_off_by_the_network_namespace(listener: socket.socket) -> None:
    port = _port(listener)
    assert _run(NATIVE_CONNECT, port, "open") == {"isolation": "none", "fd_ok": True, "errno": 0}
    assert _received(listener) == b"native"
    result = _run(NATIVE_CONNECT, port, "guarded")
    if result["isolation"] == "none":
        pytest.skip("this host refuses new network namespaces; only the audit hook applies")
    assert result["fd_ok"] and result["errno"] != 0, result
    assert _received(listener) is None


# Python code that a hostile file reaches, stood in for by an `inspect_model` that phones
# home: the inspector's own entry point must have cut the network before it runs.
PHONING_MODEL = """
    import json, socket, sys
    from worker.engine import inspect

    def phone_home(*args, **kwargs):
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).sendall(b"leak")

    inspect.inspect_model = phone_home
    code = inspect.main(["model", sys.argv[2]])
    print(json.dumps({"exit": code}))
"""


def test_inspector_child_cannot_phone_home(listener: socket.socket, tmp_path: Path) -> None:
    model = payloads.tiny_onnx(tmp_path / "m.onnx")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PHONING_MODEL), str(_port(listener)), str(model)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    result_line, exit_line = proc.stdout.splitlines()[-2:]
    assert json.loads(exit_line) == {"exit": 1}, proc.stderr
    result = json.loads(result_line)
    assert result["ok"] is False and result["code"] == "invalid_model"
    assert REFUSED in result["message"]
    assert _received(listener) is None


def test_inspector_still_inspects_models_and_datasets(tmp_path: Path) -> None:
    inspector = Inspector(sandbox=Sandbox(), scratch_root=tmp_path / "scratch", timeout_s=300)
    info = run_coroutine(inspector.model(payloads.tiny_onnx(tmp_path / "m.onnx"), tenant="t"))
    assert (info.format, info.input_shape) == ("onnx", [1, 3, 8, 8])
    assert (info.stats.params, info.stats.macs) == (108, 6912)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((10, 3, 8, 8), np.float32), y=np.arange(10) % 2)
    dataset = run_coroutine(inspector.dataset(data, tenant="t"))
    assert (dataset.format, dataset.num_samples, dataset.num_classes) == ("npz", 10, 2)

"""Inspect an uploaded model or dataset in a sandboxed child process, a bounded few at once.

Parsing untrusted files runs native code (protobuf, onnxruntime, zip readers) and, for some
formats, the uploader's graph: a crash, hang or attack there must fail the upload, never
reach the API's files, secrets or network. The child is
`python -m worker.engine.inspect {model,dataset} FILE …` run by `infra.sandbox` (bubblewrap:
no network, no secrets, read-only system, its own scratch directory, resource limits); it
prints one JSON line `{"ok": true, "info": {…}}` or `{"ok": false, "code", "message"}`.

The children run as asyncio subprocesses, off the thread pool that serves requests, and
through a bounded pool: at most `concurrency` at once (so their memory, each capped at
`memory_total_bytes / concurrency`, stays within `memory_total_bytes`), at most
`per_tenant` of them for one tenant (so one tenant's burst leaves room for the others),
and at most `max_waiting` uploads of one tenant waiting for a place (beyond that, 429).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from app.core.errors import ApiError, TooManyRequests, Unprocessable
from contract import DatasetInfo, ModelInfo
from contract.model_info import Prunability
from infra.sandbox import Limits, Sandbox, SandboxUnavailable

_Validated = TypeVar("_Validated", bound=BaseModel)

log = logging.getLogger(__name__)

_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_MAX_MESSAGE = 500
# The result is one short JSON line; a child that prints more is cut off there.
MAX_STDOUT_BYTES = 1 << 20
MAX_STDERR_BYTES = 64 << 10
# Where the upload appears inside the sandbox (read-only).
SANDBOX_INPUT = Path("/input/upload")
INSPECT_COMMAND = ("python", "-m", "worker.engine.inspect")


@dataclass(frozen=True)
class PoolLimits:
    """How many inspections run at once, in all and per tenant, and their memory."""

    concurrency: int = 2
    per_tenant: int = 1
    max_waiting: int = 8
    memory_total_bytes: int = 4 << 30


class _Pool:
    """Admission for inspections: a global bound, a per-tenant share of it, and a cap on
    how many of one tenant's uploads may wait. Built lazily in the event loop."""

    def __init__(self, limits: PoolLimits) -> None:
        self.limits = limits
        self._slots: asyncio.Semaphore | None = None
        self._tenant_slots: dict[str, asyncio.Semaphore] = {}
        self._pending: dict[str, int] = defaultdict(int)

    @contextlib.asynccontextmanager
    async def place(self, tenant: str) -> AsyncIterator[None]:
        if self._pending[tenant] >= self.limits.max_waiting + self.limits.per_tenant:
            raise TooManyRequests(
                "too many uploads of this tenant are being inspected; retry when one has finished",
                retry_after_s=5,
                code="too_many_uploads",
            )
        self._pending[tenant] += 1
        try:
            # The tenant's share first: one tenant's queue never fills the global one.
            async with self._tenant(tenant), self._global():
                yield
        finally:
            self._pending[tenant] -= 1
            if not self._pending[tenant]:
                del self._pending[tenant]
                self._tenant_slots.pop(tenant, None)

    def _global(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limits.concurrency)
        return self._slots

    def _tenant(self, tenant: str) -> asyncio.Semaphore:
        if tenant not in self._tenant_slots:
            self._tenant_slots[tenant] = asyncio.Semaphore(self.limits.per_tenant)
        return self._tenant_slots[tenant]


class Inspector:
    """Runs the inspector module in sandboxed child processes and returns contract objects."""

    def __init__(
        self,
        *,
        sandbox: Sandbox,
        scratch_root: Path,
        timeout_s: float,
        pool: PoolLimits | None = None,
        command: tuple[str, ...] | list[str] = INSPECT_COMMAND,
    ) -> None:
        self.sandbox = sandbox
        self.scratch_root = scratch_root
        self.timeout_s = timeout_s
        self.pool_limits = pool or PoolLimits()
        self.command = list(command)
        self._pool = _Pool(self.pool_limits)

    @property
    def limits(self) -> Limits:
        per_child = self.pool_limits.memory_total_bytes // max(1, self.pool_limits.concurrency)
        return Limits(
            memory_bytes=per_child,
            cpu_s=max(1, int(self.timeout_s)),
            processes=256,
            file_bytes=1 << 30,
        )

    async def model(
        self,
        path: Path,
        *,
        tenant: str,
        arch: str | None = None,
        input_shape: list[int] | None = None,
    ) -> ModelInfo:
        """Inspect a model file; raises Unprocessable with the inspector's code."""
        args = _model_args(arch, input_shape)
        info = await self._run("model", path, args, tenant, fallback_code="invalid_model")
        return self._validate(ModelInfo, info, "invalid_model")

    async def prunability(
        self,
        path: Path,
        *,
        tenant: str,
        arch: str | None = None,
        input_shape: list[int] | None = None,
    ) -> Prunability:
        """Analyse an accepted model's channel groups; raises Unprocessable with the
        analysis' code (analysis_timeout, pruning_failed, ...)."""
        args = _model_args(arch, input_shape)
        info = await self._run("prunability", path, args, tenant, fallback_code="analysis_failed")
        return self._validate(Prunability, info, "analysis_failed")

    async def dataset(self, path: Path, *, tenant: str) -> DatasetInfo:
        """Inspect a dataset file; raises Unprocessable with the inspector's code."""
        info = await self._run("dataset", path, [], tenant, fallback_code="invalid_dataset")
        return self._validate(DatasetInfo, info, "invalid_dataset")

    @staticmethod
    def _validate(cls: type[_Validated], info: Any, code: str) -> _Validated:
        try:
            return cls.model_validate(info)
        except ValidationError as exc:
            log.warning("inspector returned an invalid %s: %s", cls.__name__, exc)
            raise Unprocessable("the file could not be inspected", code=code) from exc

    async def _run(
        self, kind: str, path: Path, args: list[str], tenant: str, *, fallback_code: str
    ) -> Any:
        async with self._pool.place(tenant):
            stdout, returncode = await self._spawn(kind, path, args, fallback_code)
        payload = _last_json_line(stdout)
        if payload is None:
            log.warning("inspector %s exited %s without a result", kind, returncode)
            raise Unprocessable(
                f"the {kind} could not be inspected (the inspector exited with status "
                f"{returncode})",
                code=fallback_code,
            )
        if payload.get("ok") is True and isinstance(payload.get("info"), dict):
            return payload["info"]
        code = str(payload.get("code") or fallback_code)
        if not _CODE_RE.match(code):
            code = fallback_code
        message = str(payload.get("message") or f"invalid {kind}")[:_MAX_MESSAGE]
        raise Unprocessable(message, code=code)

    async def _spawn(
        self, kind: str, path: Path, args: list[str], fallback_code: str
    ) -> tuple[str, int | None]:
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"inspect-{kind}-", dir=self.scratch_root))
        try:
            prepared = self._prepare(kind, path, args, scratch)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *prepared.argv,
                    env=prepared.env,
                    pass_fds=prepared.pass_fds,
                    cwd=prepared.cwd,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    start_new_session=True,
                )
            finally:
                prepared.close()
            return await self._collect(proc, fallback_code)
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    def _prepare(self, kind: str, path: Path, args: list[str], scratch: Path) -> Any:
        if self.sandbox.insecure:
            target = path  # the same file, in place: nothing is isolated anyway
            readonly: list[tuple[Path, Path]] = []
        else:
            target = SANDBOX_INPUT
            readonly = [(path, SANDBOX_INPUT)]
            # The sandbox user reads the upload through a read-only bind.
            path.chmod(0o644)
        argv = [*self.command, kind, str(target), *args]
        try:
            return self.sandbox.prepare(
                argv,
                scratch=scratch,
                limits=self.limits,
                readonly=readonly,
                env={"OMP_NUM_THREADS": "1"},
            )
        except SandboxUnavailable as exc:
            log.error("refusing an upload: %s", exc)
            raise ApiError(
                "uploads are refused: this server cannot isolate untrusted files",
                status=503,
                code="sandbox_unavailable",
            ) from exc

    async def _collect(
        self, proc: asyncio.subprocess.Process, fallback_code: str
    ) -> tuple[str, int | None]:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            stdout, stderr, _ = await asyncio.wait_for(
                asyncio.gather(
                    _read_capped(proc.stdout, MAX_STDOUT_BYTES),
                    _read_capped(proc.stderr, MAX_STDERR_BYTES),
                    proc.wait(),
                ),
                timeout=self.timeout_s,
            )
        except TimeoutError as exc:
            raise Unprocessable(
                f"inspection timed out after {self.timeout_s:g} s", code=fallback_code
            ) from exc
        finally:
            # The whole group: the sandbox and anything it started (also when the client
            # went away and this coroutine was cancelled).
            if proc.returncode is None:
                _kill_group(proc)
            with contextlib.suppress(ProcessLookupError, asyncio.CancelledError):
                await asyncio.shield(proc.wait())
        if proc.returncode != 0 and stderr:
            log.info("inspector stderr: %s", stderr[-2000:])
        return stdout, proc.returncode


def _model_args(arch: str | None, input_shape: list[int] | None) -> list[str]:
    args: list[str] = []
    if arch:
        args += ["--arch", arch]
    if input_shape:
        args += ["--input-shape", ",".join(str(d) for d in input_shape)]
    return args


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> str:
    """Everything the stream says, keeping the first `cap` bytes (the rest is drained)."""
    kept = bytearray()
    while chunk := await stream.read(1 << 16):
        if len(kept) < cap:
            kept += chunk[: cap - len(kept)]
    return kept.decode("utf-8", "replace")


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _last_json_line(stdout: str) -> dict[str, Any] | None:
    # Native libraries may print to stdout before the result: the result is the last
    # line that parses as a JSON object with an "ok" member.
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "ok" in value:
            return value
    return None

"""Inspect an uploaded model or dataset in a child process.

Parsing untrusted files runs native code (protobuf, onnxruntime, zip readers); a crash or
hang there must fail the upload, not the API. The child is
`python -m worker.engine.inspect {model,dataset} PATH …` under memory and CPU limits and
without network (the child cuts itself off first thing: `worker.engine.sandbox`); it
prints one JSON line `{"ok": true, "info": {…}}` or `{"ok": false, "code", "message"}`.
"""

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.core.errors import Unprocessable
from contract import DatasetInfo, ModelInfo

log = logging.getLogger(__name__)

_PROJECT_ROOT = Path(__file__).resolve().parents[1]
_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_MAX_MESSAGE = 500


class Inspector:
    """Runs the inspector module in a child process and returns contract objects."""

    def __init__(
        self,
        *,
        timeout_s: float,
        max_memory_bytes: int,
        command: list[str] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_memory_bytes = max_memory_bytes
        self.command = command or [sys.executable, "-m", "worker.engine.inspect"]

    def model(
        self, path: Path, *, arch: str | None = None, input_shape: list[int] | None = None
    ) -> ModelInfo:
        """Inspect a model file; raises Unprocessable with the inspector's code."""
        args: list[str] = []
        if arch:
            args += ["--arch", arch]
        if input_shape:
            args += ["--input-shape", ",".join(str(d) for d in input_shape)]
        info = self._run("model", path, args, fallback_code="invalid_model")
        return self._validate(ModelInfo, info, "invalid_model")

    def dataset(self, path: Path) -> DatasetInfo:
        """Inspect a dataset file; raises Unprocessable with the inspector's code."""
        info = self._run("dataset", path, [], fallback_code="invalid_dataset")
        return self._validate(DatasetInfo, info, "invalid_dataset")

    @staticmethod
    def _validate(cls: type[Any], info: Any, code: str) -> Any:
        try:
            return cls.model_validate(info)
        except ValidationError as exc:
            log.warning("inspector returned an invalid %s: %s", cls.__name__, exc)
            raise Unprocessable("the file could not be inspected", code=code) from exc

    def _run(self, kind: str, path: Path, args: list[str], *, fallback_code: str) -> Any:
        cmd = [
            *self.command, kind, str(path), *args,
            "--max-memory-bytes", str(self.max_memory_bytes),
            "--max-cpu-s", str(int(self.timeout_s)),
        ]
        stdout, returncode = self._spawn(cmd, fallback_code)
        payload = _last_json_line(stdout)
        if payload is None:
            log.warning("inspector %s exited %s without a result", kind, returncode)
            raise Unprocessable(
                f"the {kind} could not be inspected (the inspector exited with status "
                f"{returncode})", code=fallback_code,
            )
        if payload.get("ok") is True and isinstance(payload.get("info"), dict):
            return payload["info"]
        code = str(payload.get("code") or fallback_code)
        if not _CODE_RE.match(code):
            code = fallback_code
        message = str(payload.get("message") or f"invalid {kind}")[:_MAX_MESSAGE]
        raise Unprocessable(message, code=code)

    def _spawn(self, cmd: list[str], fallback_code: str) -> tuple[str, int]:
        env = dict(os.environ)
        # The child imports `worker.engine`: make the project importable whatever the cwd.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT),
                                                          env.get("PYTHONPATH")]))
        # One upload must not take every core of the API host.
        env.setdefault("OMP_NUM_THREADS", "1")
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, start_new_session=True, text=True, errors="replace",
        )
        try:
            stdout, stderr = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired as exc:
            # Kill the whole process group: the inspector may have started helpers.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise Unprocessable(
                f"inspection timed out after {self.timeout_s:g} s", code=fallback_code
            ) from exc
        if proc.returncode != 0 and stderr:
            log.info("inspector stderr: %s", stderr[-2000:])
        return stdout, proc.returncode


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

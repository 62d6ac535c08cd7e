"""`secateurs serve | api | worker | keys create`: running the service.

`serve` is the one-command default (API + one worker, SQLite, embedded broker, files in
./data); `api` and `worker` run the two halves separately for production, where the
settings point them at Redis, PostgreSQL and S3. None of these import torch in this
process: the worker's children import the engine when a job starts.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import func, select

from cli.main import app
from infra.config import Settings

keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys (stored hashed).")
app.add_typer(keys_app, name="keys")

# Seconds a stopping worker gets to finish warm (acknowledging its job), then cold.
WARM_STOP_S = 10.0
COLD_STOP_S = 5.0
# A worker that dies under `serve` is restarted, but not in a tight loop.
MAX_WORKER_RESTARTS = 5
# Tells serve's worker the pid of serve, so that it can notice being orphaned.
SERVE_PID_ENV = "SECATEURS_SERVE_PID"
# Seconds between the worker's looks at whether serve is still its parent.
PARENT_POLL_S = 1.0

HostOpt = Annotated[str | None, typer.Option(help="Bind address [default: HOST or 127.0.0.1]")]
PortOpt = Annotated[int | None, typer.Option(help="Port [default: PORT or 8000]")]
DataOpt = Annotated[Path | None, typer.Option(help="Data directory [default: ./data]")]


def _settings(
    host: str | None = None, port: int | None = None, data_dir: Path | None = None
) -> Settings:
    """Settings from the environment, with command-line overrides exported to it so that
    child processes (the worker of `serve`) see the same values."""
    for name, value in (("HOST", host), ("PORT", port), ("SECATEURS_DATA_DIR", data_dir)):
        if value is not None:
            os.environ[name] = str(value)
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def _sessions(settings: Settings):  # type: ignore[no-untyped-def]
    from infra.db.session import init_db, make_engine, make_sessionmaker

    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    return make_sessionmaker(engine)


def upgrade_schema(settings: Settings) -> None:
    """Migrate the job store to the newest revision before serving, once here rather than
    in each of `--workers N` processes at the same moment (they find it done)."""
    from infra.db.migrations import SchemaMismatch
    from infra.db.session import init_db, make_engine

    engine = make_engine(settings.resolved_database_url)
    try:
        init_db(engine)
    except SchemaMismatch as exc:
        typer.echo(f"error: schema_mismatch: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


def ensure_first_key(settings: Settings) -> str | None:
    """With no key configured anywhere, create one for tenant `default` and return it."""
    from app.core.auth import create_api_key
    from infra.db.models import ApiKey
    from infra.db.session import session_scope

    if settings.parsed_api_keys():
        return None
    with session_scope(_sessions(settings)) as session:
        if session.scalar(select(func.count()).select_from(ApiKey)):
            return None
        return create_api_key(session, "default", label="first key, created by serve")


def _print_key_banner(key: str, settings: Settings) -> None:
    typer.echo(
        "\n  No API key was configured, so one was created for tenant 'default'.\n"
        "  It is shown once; keep it (only its hash is stored):\n\n"
        f"      {key}\n\n"
        f"  Dashboard: http://{settings.host}:{settings.port}/  "
        f"(API: Authorization: Bearer {key[:6]}…)\n",
        err=True,
    )


# uvicorn's HTTP protocol with a deadline on reading request headers (slow clients), as
# an import string so that `--workers N` children load it too.
HTTP_PROTOCOL = "app.core.httpproto:TimedHttpToolsProtocol"
# Seconds an idle keep-alive connection stays open between requests.
KEEP_ALIVE_S = 5
# Bytes of request line and headers one request may send (h11; httptools has its own).
MAX_HEADER_BYTES = 16 * 1024


def _run_api(settings: Settings, workers: int = 1) -> None:
    import uvicorn

    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level="info",
        proxy_headers=True,
        http=HTTP_PROTOCOL,
        timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )


def _start_worker_process() -> subprocess.Popen[bytes]:
    code = "from cli.main import main; main()"
    # A session of its own: the terminal's Ctrl-C reaches only `serve`, which then stops
    # the worker in order (warm first, so the job in hand is handed back, then cold).
    # Being out of serve's process group, it would outlive a serve killed outright; told
    # serve's pid, it follows its parent (follow_parent).
    env = {**os.environ, SERVE_PID_ENV: str(os.getpid())}
    return subprocess.Popen([sys.executable, "-c", code, "worker"], start_new_session=True, env=env)


def follow_parent(parent_pid: int) -> None:
    """Stop this worker when its parent, `serve`, dies, even by SIGKILL.

    Linux sends SIGTERM (a warm stop) at the parent's death (PR_SET_PDEATHSIG); a thread
    watching the parent pid covers other systems and a warm stop that does not finish
    (a broker whose files are gone), ending as `serve` would have: cold, then killed."""
    from billiard.util import set_pdeathsig

    with contextlib.suppress(OSError):  # not Linux: the watcher alone
        set_pdeathsig(signal.SIGTERM)
    # The signal is sent when the thread that started us exits: serve's main thread, or
    # its keeper thread for a restarted worker; both live as long as serve does.
    threading.Thread(
        target=_stop_when_orphaned, args=(parent_pid,), name="parent-watch", daemon=True
    ).start()


def _stop_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:  # also true when serve died before set_pdeathsig
        time.sleep(PARENT_POLL_S)
    for sig, wait_s in ((signal.SIGTERM, WARM_STOP_S), (signal.SIGQUIT, COLD_STOP_S)):
        os.kill(os.getpid(), sig)
        time.sleep(wait_s)
    # Still here: this process and its pool children (its own process group) go at once.
    os.killpg(os.getpgid(0), signal.SIGKILL)


class WorkerKeeper:
    """Keeps the worker of `serve` running: restarts it when it dies, until stopped."""

    def __init__(self) -> None:
        self.proc = _start_worker_process()
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-keeper", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            code = self.proc.poll()
            if code is None or self._stopping.is_set():
                continue
            if self.restarts >= MAX_WORKER_RESTARTS:
                typer.echo(
                    f"the worker exited ({code}) {self.restarts} times; "
                    "jobs will wait in the queue",
                    err=True,
                )
                return
            self.restarts += 1
            typer.echo(f"the worker exited ({code}); restarting it", err=True)
            self.proc = _start_worker_process()

    def stop(self) -> int:
        self._stopping.set()
        self._thread.join(timeout=5)
        return stop_worker_process(self.proc)


def stop_worker_process(proc: subprocess.Popen[bytes]) -> int:
    """Stop the worker: SIGTERM (warm), then SIGQUIT (cold), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, WARM_STOP_S), (signal.SIGQUIT, COLD_STOP_S)):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.kill()
    return proc.wait()


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@app.command()
def serve(host: HostOpt = None, port: PortOpt = None, data_dir: DataOpt = None) -> None:
    """Run everything on this machine: the API and dashboard plus one worker.

    SQLite job store and an embedded broker in the data directory; no server needed.
    """
    settings = _settings(host, port, data_dir)
    upgrade_schema(settings)
    key = ensure_first_key(settings)
    if key:
        _print_key_banner(key, settings)
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with the default
    # action the process would die there and leave the worker (its own session) running.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    keeper = WorkerKeeper()
    try:
        _run_api(settings)
    finally:
        typer.echo("stopping the worker…", err=True)
        keeper.stop()


@app.command()
def api(
    host: HostOpt = None,
    port: PortOpt = None,
    data_dir: DataOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 1,
) -> None:
    """Run the HTTP API and dashboard only (jobs run in `secateurs worker` processes)."""
    settings = _settings(host, port, data_dir)
    upgrade_schema(settings)
    _run_api(settings, workers=workers)


@app.command()
def worker(
    gpu: Annotated[int | None, typer.Option(help="GPU index this worker owns")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="jobs at once (keep 1 per GPU)")] = 1,
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "info",
    data_dir: DataOpt = None,
) -> None:
    """Run a job worker: one job at a time on one GPU (or the CPU without one)."""
    if serve_pid := os.environ.pop(SERVE_PID_ENV, None):
        follow_parent(int(serve_pid))
    if gpu is not None:
        # Set before anything can touch CUDA: the children inherit it and see one GPU.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    _settings(data_dir=data_dir)
    from infra.queue_names import QUEUE
    from worker.celery_app import celery_app

    node = f"{'gpu' + str(gpu) if gpu is not None else 'cpu'}-{os.getpid()}@%h"
    celery_app.worker_main(
        [
            "worker",
            "--queues",
            QUEUE,
            "--concurrency",
            str(concurrency),
            "--pool",
            "prefork",
            "--max-tasks-per-child",
            "1",
            "--prefetch-multiplier",
            "1",
            "--loglevel",
            loglevel,
            "--hostname",
            node,
            "--without-gossip",
            "--without-mingle",
        ]
    )


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to")],
    label: Annotated[str | None, typer.Option(help="A note stored with the key")] = None,
) -> None:
    """Create an API key for TENANT and print it (once: only its hash is stored)."""
    from app.core.auth import create_api_key
    from infra.db.session import session_scope

    settings = _settings()
    try:
        with session_scope(_sessions(settings)) as session:
            key = create_api_key(session, tenant, label=label)
    except ValueError as exc:
        typer.echo(f"error: invalid_tenant: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(key)

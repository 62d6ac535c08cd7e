"""Thread pools of their own for the blocking work that must not queue behind other work.

Starlette runs sync routes and `run_in_threadpool` calls on one shared pool (40 threads).
Work that can pile up there (upload storage, event-stream polls) would make every other
request wait for a thread, authentication included. So each kind gets a small pool of its
own: authentication never waits behind uploads, and N open event streams never use more
than a few database connections between them.

Threads and database connections must never wait for each other in a circle (the classic
deadlock of a full thread pool whose requests wait for connections held by sessions that
wait for a thread to close them). So: the `db` pool runs the job lists' reads, each of
which opens, uses and closes its own session without waiting for any other thread; and
request sessions are closed on the `release` pool, whose work needs no connection, so a
held connection always comes back however busy every other pool is.
"""

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# Key lookups are one indexed SELECT: a few threads keep up with thousands a second.
AUTH_THREADS = 4
# Each poll of an event stream is two small SELECTs.
EVENT_THREADS = 4
# Storing an upload (a rename locally, a multipart upload to S3) and its row.
UPLOAD_THREADS = 4
# Job lists (a millisecond or so each), and status reads that find SQLite locked (the
# others are made on the event loop: app.api.status_reader).
DB_THREADS = 4
# Closing request sessions (a rollback that hands the connection back).
RELEASE_THREADS = 2


class Pools:
    """The process's dedicated thread pools; `shutdown()` when the app stops."""

    def __init__(self) -> None:
        self.auth = ThreadPoolExecutor(AUTH_THREADS, thread_name_prefix="auth")
        self.events = ThreadPoolExecutor(EVENT_THREADS, thread_name_prefix="events")
        self.uploads = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="uploads")
        self.db = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="db")
        self.release = ThreadPoolExecutor(RELEASE_THREADS, thread_name_prefix="release")

    def shutdown(self) -> None:
        for pool in (self.auth, self.events, self.uploads, self.db, self.release):
            pool.shutdown(wait=False, cancel_futures=True)


async def run_in(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn(*args, **kwargs)` on `pool` and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(pool, functools.partial(fn, *args, **kwargs))

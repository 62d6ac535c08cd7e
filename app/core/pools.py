"""Thread pools of their own for the blocking work that must not queue behind other work.

Starlette runs sync routes and `run_in_threadpool` calls on one shared pool (40 threads).
Work that can pile up there (upload storage, event-stream polls) would make every other
request wait for a thread, authentication included. So each kind gets a small pool of its
own: authentication never waits behind uploads, and N open event streams never use more
than a few database connections between them.
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


class Pools:
    """The process's dedicated thread pools; `shutdown()` when the app stops."""

    def __init__(self) -> None:
        self.auth = ThreadPoolExecutor(AUTH_THREADS, thread_name_prefix="auth")
        self.events = ThreadPoolExecutor(EVENT_THREADS, thread_name_prefix="events")
        self.uploads = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="uploads")

    def shutdown(self) -> None:
        for pool in (self.auth, self.events, self.uploads):
            pool.shutdown(wait=False, cancel_futures=True)


async def run_in(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any,
                 **kwargs: Any) -> T:
    """Run `fn(*args, **kwargs)` on `pool` and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(pool, functools.partial(fn, *args, **kwargs))

"""Python client of the Secateurs pruning service.

    from secateurs_client import Client

    with Client("http://127.0.0.1:8000", "sk_...") as client:
        result = client.prune("resnet18.onnx", {"prune": {"target": {"macs_reduction": 0.5}}})
        print(result.model_path, result.report["ratios"])

Needs only httpx: it imports neither the service nor torch.
"""

from secateurs_client.client import Client, PruneResult
from secateurs_client.errors import (
    AuthError,
    ChecksumMismatch,
    Conflict,
    ConnectionFailed,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    SecateursError,
    Unavailable,
    ValidationError,
    WaitTimeout,
)
from secateurs_client.events import Event, parse_events
from secateurs_client.progress import TerminalProgress

__all__ = [
    "AuthError", "ChecksumMismatch", "Client", "Conflict", "ConnectionFailed", "Event",
    "JobFailed", "NotFound", "PayloadTooLarge", "PruneResult", "RateLimited",
    "SecateursError", "TerminalProgress", "Unavailable", "ValidationError", "WaitTimeout",
    "parse_events",
]
__version__ = "0.1.0"

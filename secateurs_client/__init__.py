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
from secateurs_client.webhooks import WebhookVerificationError
from secateurs_client.webhooks import verify as verify_webhook

__all__ = [
    "AuthError",
    "ChecksumMismatch",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Event",
    "JobFailed",
    "NotFound",
    "PayloadTooLarge",
    "PruneResult",
    "RateLimited",
    "SecateursError",
    "TerminalProgress",
    "Unavailable",
    "ValidationError",
    "WaitTimeout",
    "WebhookVerificationError",
    "parse_events",
    "verify_webhook",
]
__version__ = "0.1.0"

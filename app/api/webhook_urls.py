"""The submission check of a job's `webhook_url`: the API's side of the webhook address
rule (`infra.webhooks.check_url_host`), answered as 422 `webhook_url_forbidden`."""

from app.core.errors import Unprocessable
from infra.config import Settings
from infra.webhooks import ForbiddenAddress, check_url_host


class WebhookUrlForbidden(Unprocessable):
    code = "webhook_url_forbidden"


# Whether submissions may name non-public addresses: the API process's setting, set when
# its app is built (a request body's validator has no other way to reach the settings).
_submissions = {"allow_private": False}


def configure(settings: Settings) -> None:
    """Apply this process's webhook settings to the submission check."""
    _submissions["allow_private"] = settings.webhook_allow_private


def check_submitted_url(url: str) -> None:
    """The submission check of a job's webhook_url: 422 `webhook_url_forbidden` for a
    host that is a forbidden address or a loopback name."""
    try:
        check_url_host(url, allow_private=_submissions["allow_private"])
    except ForbiddenAddress as exc:
        raise WebhookUrlForbidden(
            f"webhook_url: {exc}; webhooks go to public addresses only"
        ) from exc

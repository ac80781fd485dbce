"""Cloud provider failures as one-line DriverErrors: libcloud's exceptions translated, never a traceback."""

import re
import socket

from dockyard.provisioner.core.errors import DriverError


class CloudError(DriverError):
    """A cloud provider refused or failed a request."""


class CloudAuthError(CloudError):
    """The provider refused the credentials."""


class CloudNotFound(CloudError):
    """A region, size, image or other named object does not exist at the provider."""


class CloudQuotaError(CloudError):
    """A quota or rate limit was hit."""


class CloudUnreachable(CloudError):
    """The provider's API could not be reached."""


_QUOTA_WORDS = ("quota", "limit exceeded", "limitexceeded", "insufficient", "too many", "rate limit")
_QUOTA_WORDS_403 = ("quota", "limit exceeded", "limitexceeded", "rate limit")
_NOT_FOUND_WORDS = (
    "notfound",
    "not found",
    "does not exist",
    "invalid region",
    "unknown region",
    "invalidamiid",
    "invalid value",
    "invalidparametervalue",
)


def one_line(text, limit=400):
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _message(e):
    # libcloud's errors carry the provider's text in .value; str() may prefix the class name.
    value = getattr(e, "value", None)
    text = value if isinstance(value, str) and value else str(e)
    if not text:
        text = type(e).__name__
    return one_line(text)


def translate(provider, what, e):
    """The DriverError subclass for exception e raised while doing `what`."""
    from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
    from libcloud.common.types import InvalidCredsError, LibcloudError

    msg = _message(e)
    prefix = f"{provider}: {what}: "
    code = getattr(e, "code", None) or getattr(e, "http_code", None)
    low = msg.lower()
    # Quota first: several providers answer "quota exceeded" with a 403 (OpenStack Nova does).
    words = _QUOTA_WORDS_403 if code in (401, 403) else _QUOTA_WORDS  # "insufficient privileges" is auth
    quota = isinstance(e, RateLimitReachedError) or code == 429 or any(w in low for w in words)
    if quota and not isinstance(e, InvalidCredsError):
        return CloudQuotaError(prefix + f"quota or rate limit reached ({msg})")
    if isinstance(e, InvalidCredsError) or code in (401, 403) or "authfailure" in low or "unauthorized" in low:
        return CloudAuthError(prefix + f"the provider refused the credentials ({msg})")
    if isinstance(e, (socket.error, ConnectionError, TimeoutError)) or type(e).__module__.startswith(
        ("requests", "urllib3")
    ):
        return CloudUnreachable(prefix + f"cannot reach the provider's API ({msg})")
    if code == 404 or any(w in low for w in _NOT_FOUND_WORDS):
        return CloudNotFound(prefix + msg)
    if isinstance(e, (BaseHTTPError, LibcloudError, ValueError, KeyError, AttributeError, TypeError)):
        return CloudError(prefix + msg)
    return CloudError(prefix + f"{type(e).__name__}: {msg}")

"""A small client of the GSLB's HTTP API, for the command line and scripts.

Standard library only (urllib), so ``gslb status`` and ``gslb register`` start fast
and need nothing the server does not. Every failure is a GslbError whose message is the
API's own ``error`` text (with the offending field), or an Unreachable saying why.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from gslb.errors import GslbError, Unreachable

TIMEOUT = 5.0  # seconds; a GSLB that takes longer to answer its own API is unwell


class ApiClient:
    """Talks to one GSLB instance's API at ``url`` (e.g. http://127.0.0.1:8053)."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def get(self, path: str, query: dict[str, str] | None = None) -> Any:
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        return self._call(urllib.request.Request(f"{self.url}{path}{suffix}"))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        return self._call(request)

    def _call(self, request: urllib.request.Request) -> Any:
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise GslbError(f"{exc.code}: {_error_text(exc)}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach the API at {self.url}: {reason}") from None


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.load(exc)
    except ValueError:
        return str(exc.reason)
    if not isinstance(body, dict):
        return str(exc.reason)
    message = str(body.get("error", exc.reason))
    field = body.get("field")
    return f"{field}: {message}" if field and not message.startswith(str(field)) else message

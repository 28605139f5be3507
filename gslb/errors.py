"""Errors of the GSLB. Each class's docstring is its default message.

    GslbError
    ├── ConfigError       a zone file or setting is invalid (carries every problem found)
    ├── RequestError      a change request is invalid (names the offending field)
    ├── Forbidden         the change is not allowed (an address outside a pool's allow list)
    ├── NotFound          the service, pool or endpoint does not exist
    ├── Conflict          the change contradicts the current state
    ├── StoreError        the state store could not be read or written
    │   └── NotShared     applied by this instance only: the shared store failed
    └── Unreachable       the API of a GSLB instance did not answer (command line)
"""

from __future__ import annotations


class GslbError(Exception):
    """GSLB error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(GslbError):
    """Invalid configuration."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems) or None)


class RequestError(GslbError):
    """Invalid request."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class Forbidden(GslbError):
    """Not allowed."""


class NotFound(GslbError):
    """Not found."""


class Conflict(GslbError):
    """Conflicts with the current state."""


class StoreError(GslbError):
    """The state store failed."""


class NotShared(StoreError):
    """Applied by this instance only: the shared store failed."""


class Unreachable(GslbError):
    """The GSLB API could not be reached."""

"""Health by quorum: several instances probe the same endpoint; who decides?

Each instance's prober turns its own checks into a verdict (up or down, after rise/fall)
and shares it with a timestamp. An endpoint's effective probe state counts the verdicts
of the instances that reported recently (this instance's own verdict always counts):
it is down when at least ``needed`` of them see it down, where ``needed`` is the
configured quorum capped by how many reported, or by default a majority of them.

    instances reporting   quorum 0 (majority)   quorum 1     quorum 2
    1                     1 down: down          1: down      1: down (capped)
    2                     2 down: down          1: down      2: down
    3                     2 down: down          1: down      2: down

So with two or more instances, one instance with a broken network path does not take an
endpoint down for everyone; with one instance it behaves as if there were no quorum.
Verdicts older than ``fresh`` seconds (a stopped instance's) no longer count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

FRESH = 5.0  # seconds a shared verdict counts after it was reported


@dataclass(frozen=True, slots=True)
class Report:
    """One instance's verdict on one endpoint, as shared, and when it was reported."""

    up: bool
    at: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """The effective probe state and the count behind it."""

    up: bool
    down_votes: int
    voters: int
    needed: int

    def reason(self) -> str:
        return (f"{self.down_votes} of {self.voters} instances see it down "
                f"({self.needed} needed)")


def needed_votes(quorum: int, voters: int) -> int:
    """Down votes that take an endpoint down: ``quorum`` (at most ``voters``), or a
    majority of ``voters`` when ``quorum`` is 0."""
    if quorum > 0:
        return min(quorum, voters)
    return voters // 2 + 1


def decide(
    local: bool | None,
    others: Iterable[Report],
    now: float,
    quorum: int = 0,
    fresh: float = FRESH,
) -> Verdict | None:
    """The effective probe state from this instance's verdict (None: none yet) and the
    other instances' reports; None when nobody has a verdict."""
    votes = [report.up for report in others if now - report.at <= fresh]
    if local is not None:
        votes.append(local)
    if not votes:
        return None
    downs = votes.count(False)
    needed = needed_votes(quorum, len(votes))
    return Verdict(downs < needed, downs, len(votes), needed)

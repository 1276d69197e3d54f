"""What the sender does with each answer from the upstream: one pure function, `decide`.

The sender only carries decisions out. A decision has two halves:

* what happens to the records the answer was for (`Action`), and
* what the answer says about the upstream as a whole (`Health`), which the gate turns into
  the shared backoff, the pace and the degraded reason.

| answer                                   | records         | upstream                |
|------------------------------------------|-----------------|-------------------------|
| 2xx                                      | DONE            | HEALTHY                 |
| 400, 422 for one record                  | DEAD_LETTER     | (says nothing)          |
| 400, 413, 422, 404 for several records   | SPLIT (halves)  | (says nothing)          |
| 413 for one record                       | DEAD_LETTER     | (says nothing)          |
| 404 for one record                       | PARK its pair   | (says nothing)          |
| 401 or 403, first time for this send     | REFRESH_TOKEN   | (says nothing)          |
| 401 or 403 with a fresh token            | RETRY           | MISCONFIGURED           |
| 429 or 503 with Retry-After              | RETRY, pause    | OVERLOADED              |
| 408, 425, 429, 5xx but 501               | RETRY           | OVERLOADED              |
| no answer (connection failed, timeout)   | RETRY           | FAILING                 |
| 500, 502, 504, or no answer after the    | CHECK first     | OVERLOADED (no answer:  |
| request may have been written, in        | (effectively-   | FAILING)                |
| effectively-once mode                    | once)           |                         |
| any other status (405, 409, 501 ...)     | RETRY           | MISCONFIGURED           |

Paigo sits behind an API gateway that answers a bad or expired token with 403 as well as
401, so both get one token refresh before they count as a configuration problem.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from agent.delivery.uplink import Outcome, Reply


class Action(enum.Enum):
    DONE = "done"  # delivered: the records leave the agent's care
    DEAD_LETTER = "dead_letter"  # refused for good: kept in the dead-letter file, then leave
    SPLIT = "split"  # a batch refused as a whole: send each half on its own
    PARK = "park"  # the pair is unknown upstream (404): park its lane, the rest flows
    REFRESH_TOKEN = "refresh_token"  # send again once with a fresh token
    CHECK = "check"  # unknown outcome: ask the upstream before any resend
    RETRY = "retry"  # back to its lane, sent again after the shared backoff


class Health(enum.Enum):
    SILENT = "silent"  # the answer says nothing about the upstream as a whole
    HEALTHY = "healthy"
    FAILING = "failing"  # no answer: back off, keep the pace
    OVERLOADED = "overloaded"  # 429, 5xx: back off and halve the pace
    MISCONFIGURED = "misconfigured"  # a person must fix something: back off, degraded


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    health: Health = Health.SILENT
    pause_s: float = 0.0  # Retry-After: every sender waits this long
    reason: str = ""  # for MISCONFIGURED: what to fix


DELIVERED: Final = Decision(Action.DONE, Health.HEALTHY)  # the usual answer, made once


def decide(reply: Reply, *, records: int, token_refreshed: bool, check_unknown: bool) -> Decision:
    """What to do with `records` records that got `reply`. `token_refreshed`: this send
    already used a token fetched after a 401/403. `check_unknown`: effectively-once mode."""
    if 200 <= reply.status < 300:
        return DELIVERED
    outcome = reply.outcome
    failure = Health.OVERLOADED if reply.status else Health.FAILING
    if check_unknown and reply.outcome_unknown:
        return Decision(Action.CHECK, failure)
    if outcome in (Outcome.REJECTED, Outcome.TOO_LARGE, Outcome.NOT_FOUND) and records > 1:
        return Decision(Action.SPLIT)
    if outcome in (Outcome.REJECTED, Outcome.TOO_LARGE):
        return Decision(Action.DEAD_LETTER)
    if outcome is Outcome.NOT_FOUND:
        return Decision(Action.PARK)
    if outcome in (Outcome.UNAUTHORIZED, Outcome.FORBIDDEN):
        if not token_refreshed:
            return Decision(Action.REFRESH_TOKEN)
        return Decision(
            Action.RETRY,
            Health.MISCONFIGURED,
            reason=f"the upstream answers {reply.status} even with a fresh token: "
            "check the credentials and their permissions",
        )
    if outcome is Outcome.THROTTLED:
        return Decision(Action.RETRY, Health.OVERLOADED, pause_s=reply.retry_after or 0.0)
    if outcome is Outcome.TRANSIENT:
        return Decision(Action.RETRY, failure)
    return Decision(
        Action.RETRY,
        Health.MISCONFIGURED,
        reason=f"the upstream answers {reply.status}: check upstream.url",
    )

"""What the sender does with each answer: the policy's table, row by row."""

from __future__ import annotations

import pytest

from agent.delivery.policy import Action, Health, decide
from agent.delivery.uplink import Reply

DONE, DEAD, SPLIT, PARK = Action.DONE, Action.DEAD_LETTER, Action.SPLIT, Action.PARK
REFRESH, CHECK, RETRY = Action.REFRESH_TOKEN, Action.CHECK, Action.RETRY
SILENT, OK, FAILING = Health.SILENT, Health.HEALTHY, Health.FAILING
OVERLOADED, MISCONFIGURED = Health.OVERLOADED, Health.MISCONFIGURED

NO_ANSWER_AFTER_WRITE = Reply(0, error="ServerDisconnectedError")
NO_CONNECTION = Reply(0, error="ClientConnectorError", maybe_sent=False)


@pytest.mark.parametrize(
    ("reply", "given", "expected"),
    [
        (Reply(201), (1, False, True), (DONE, OK)),
        (Reply(200), (50, False, False), (DONE, OK)),
        (Reply(400), (1, False, True), (DEAD, SILENT)),
        (Reply(422), (1, False, True), (DEAD, SILENT)),
        (Reply(413), (1, False, True), (DEAD, SILENT)),
        (Reply(400), (50, False, True), (SPLIT, SILENT)),
        (Reply(413), (50, False, True), (SPLIT, SILENT)),
        (Reply(404), (50, False, True), (SPLIT, SILENT)),
        (Reply(404), (1, False, True), (PARK, SILENT)),
        (Reply(401), (1, False, True), (REFRESH, SILENT)),
        (Reply(403), (1, False, True), (REFRESH, SILENT)),
        (Reply(401), (1, True, True), (RETRY, MISCONFIGURED)),
        (Reply(403), (50, True, False), (RETRY, MISCONFIGURED)),
        (Reply(429, retry_after=7.0), (1, False, True), (RETRY, OVERLOADED)),
        (Reply(503, retry_after=7.0), (1, False, True), (RETRY, OVERLOADED)),
        (Reply(429), (1, False, True), (RETRY, OVERLOADED)),
        (Reply(503), (1, False, True), (RETRY, OVERLOADED)),
        (Reply(408), (1, False, True), (RETRY, OVERLOADED)),
        (Reply(425), (1, False, True), (RETRY, OVERLOADED)),
        (Reply(500), (1, False, True), (CHECK, OVERLOADED)),
        (Reply(502), (1, False, True), (CHECK, OVERLOADED)),
        (Reply(504), (1, False, True), (CHECK, OVERLOADED)),
        (Reply(504), (1, False, False), (RETRY, OVERLOADED)),
        (NO_ANSWER_AFTER_WRITE, (1, False, True), (CHECK, FAILING)),
        (NO_ANSWER_AFTER_WRITE, (1, False, False), (RETRY, FAILING)),
        (NO_CONNECTION, (1, False, True), (RETRY, FAILING)),
        (Reply(405), (1, False, True), (RETRY, MISCONFIGURED)),
        (Reply(409), (1, False, True), (RETRY, MISCONFIGURED)),
        (Reply(501), (1, False, True), (RETRY, MISCONFIGURED)),
    ],
)
def test_each_answer_gets_its_action_and_says_what_it_says_of_the_upstream(
    reply: Reply, given: tuple[int, bool, bool], expected: tuple[Action, Health]
):
    """given: (records in the send, token already refreshed, effectively-once)."""
    records, refreshed, check = given
    decision = decide(reply, records=records, token_refreshed=refreshed, check_unknown=check)
    assert (decision.action, decision.health) == expected


def test_retry_after_pauses_everyone_for_as_long_as_it_says():
    decision = decide(
        Reply(429, retry_after=7.0), records=1, token_refreshed=False, check_unknown=True
    )
    assert decision.pause_s == 7.0


def test_a_configuration_problem_says_what_to_fix():
    refused = decide(Reply(403), records=1, token_refreshed=True, check_unknown=True)
    assert "credentials" in refused.reason and "403" in refused.reason
    wrong_url = decide(Reply(405), records=1, token_refreshed=False, check_unknown=True)
    assert "upstream.url" in wrong_url.reason

"""Which record goes next: ordered lanes one at a time, round-robin, parking."""

from __future__ import annotations

from agent.delivery.lanes import Lanes


def test_an_ordered_lane_has_one_in_flight_and_keeps_order():
    lanes: Lanes[int] = Lanes()
    for n in range(3):
        lanes.add(("acme", "seats", True), n, now=0)
    lane, first = lanes.take(0) or (None, None)
    assert first == 0
    assert lanes.take(0) is None  # the next waits for the first
    assert lane is not None
    lanes.done_all([lane], 0)
    assert lanes.take(0) is not None and lanes.buffered == 2


def test_a_retried_record_goes_back_to_the_front():
    lanes: Lanes[int] = Lanes()
    for n in range(3):
        lanes.add(("acme", "seats", True), n, now=0)
    lane, first = lanes.take(0)  # type: ignore[misc]
    lanes.put_back(lane, first, 0)
    assert lanes.take(0)[1] == 0  # type: ignore[index]


def test_lanes_are_served_in_turn_so_a_busy_pair_does_not_hold_the_rest():
    lanes: Lanes[str] = Lanes()
    for n in range(100):
        lanes.add(("busy", "d", False), f"busy-{n}", now=0)
    lanes.add(("quiet", "d", False), "quiet-0", now=0)
    taken = [lanes.take(0)[1] for _ in range(3)]  # type: ignore[index]
    assert "quiet-0" in taken


def test_a_parked_lane_waits_while_others_flow_and_comes_back():
    lanes: Lanes[str] = Lanes()
    lanes.add(("unknown", "d", False), "u", now=0)
    lanes.add(("known", "d", False), "k", now=0)
    lane, item = lanes.take(0)  # type: ignore[misc]
    lanes.put_back(lane, item, 0, until=60, parked=True)
    assert lanes.parked(1) == [lane.key]
    other = lanes.take(1)
    assert other is not None and other[1] != item
    assert lanes.take(1) is None
    assert lanes.next_release_s(1) == 59  # when the sender releases it
    assert lanes.release_held(59) == 0  # still held
    assert lanes.release_held(61) == 1  # the items offered again: the senders to wake
    assert lanes.take(61)[1] == item  # type: ignore[index]
    assert lanes.next_release_s(61) == float("inf")  # none held


def test_a_lane_held_apart_gives_back_its_back_items_but_never_its_first():
    lanes: Lanes[str] = Lanes()
    parked, backoff = ("unknown", "d", True), ("slow", "d", True)
    for n in range(5):
        lanes.add(parked, f"p{n}", now=0)
        lanes.add(backoff, f"b{n}", now=0)
    for until, kw in ((60, {"parked": True}), (5, {})):  # a 404; a retry's backoff
        lane, item = lanes.take(0)  # type: ignore[misc]
        lanes.put_back(lane, item, 0, until=until, **kw)
    given = lanes.give_back(1, can_go=lambda key, item: item != "p1")
    assert given == {parked: ["p2", "p3", "p4"]}  # up to the one that may not go
    assert lanes.buffered == 7 and lanes.held_apart(1) == 2
    assert lanes.holds(parked)
    assert lanes.give_back(1, can_go=lambda key, item: True) == {parked: ["p1"]}
    assert lanes.give_back(1, can_go=lambda key, item: True) == {}  # p0 stays: the lane stays
    lanes.release_held(61)
    lane, item = lanes.take(61)  # type: ignore[misc]
    assert item == "p0"
    lanes.done_all([lane], 61)
    assert not lanes.holds(parked)  # sent what it kept: its pair is back


def test_unordered_only_skips_ordered_lanes():
    lanes: Lanes[str] = Lanes()
    lanes.add(("a", "d", True), "ordered", now=0)
    lanes.add(("b", "d", False), "free", now=0)
    assert lanes.take(0, unordered_only=True)[1] == "free"  # type: ignore[index]
    assert lanes.take(0, unordered_only=True) is None
    assert lanes.take(0)[1] == "ordered"  # type: ignore[index]


def test_a_batch_is_filled_from_unordered_lanes_within_its_limits():
    lanes: Lanes[str] = Lanes()
    for n in range(10):
        lanes.add((f"c{n % 3}", "d", False), "x" * 10, now=0)
    lanes.add(("o", "d", True), "ordered", now=0)
    first = lanes.take(0, unordered_only=True)
    assert first is not None
    batch = lanes.fill([first], 0, max_items=100, max_size=45, size_of=len)
    assert len(batch) == 4  # 4 x 10 fit in 45, a fifth does not
    assert all(lane.key[0] != "o" for lane, _ in batch)
    assert lanes.buffered == 11  # the fifth went back

"""broker.confirms: which published messages one confirm settles."""

from __future__ import annotations

from broker.confirms import Confirm, Unconfirmed


def test_a_confirm_settles_exactly_its_tag_in_any_order() -> None:
    awaited: Unconfirmed[str] = Unconfirmed()
    assert [awaited.add(x) for x in "abc"] == [1, 2, 3]
    assert awaited.settle(Confirm(2, multiple=False, nacked=False)) == ["b"]
    assert awaited.settle(Confirm(2, multiple=False, nacked=False)) == []  # already settled
    assert len(awaited) == 2


def test_a_multiple_confirm_settles_every_tag_up_to_it_in_publish_order() -> None:
    awaited: Unconfirmed[str] = Unconfirmed()
    for x in "abcde":
        awaited.add(x)
    awaited.settle(Confirm(2, multiple=False, nacked=False))
    assert awaited.settle(Confirm(4, multiple=True, nacked=True)) == ["a", "c", "d"]
    assert awaited.reset() == ["e"]
    assert awaited.add("f") == 1  # a new channel numbers from 1 again

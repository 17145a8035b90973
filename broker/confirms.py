"""Publisher confirms on an asynchronous channel: what awaits the broker's word, by tag.

A confirming channel numbers its publishes 1, 2, 3, ...; the broker confirms (ack) or
refuses (nack) one tag, or with ``multiple`` every tag up to it, and confirms for
different queues arrive in any order. :class:`Unconfirmed` keeps what was published by
tag and hands back exactly what one confirm settles; :func:`read_confirm` turns pika's
frame into a :class:`Confirm`. Blocking channels need neither: pika waits for each
confirm inside ``basic_publish`` (:meth:`broker.link.Link.publish`).
"""

from __future__ import annotations

import itertools
from typing import Any, Generic, NamedTuple, TypeVar

import pika.spec

T = TypeVar("T")


class Confirm(NamedTuple):
    delivery_tag: int
    multiple: bool
    nacked: bool


def read_confirm(frame: Any) -> Confirm:
    """pika's confirm callback argument: a Basic.Ack or Basic.Nack frame."""
    method = frame.method
    return Confirm(method.delivery_tag, method.multiple, isinstance(method, pika.spec.Basic.Nack))


class Unconfirmed(Generic[T]):
    """What one channel published and the broker has not confirmed yet, in tag order."""

    def __init__(self) -> None:
        self._by_tag: dict[int, T] = {}
        self._last_tag = 0

    def __len__(self) -> int:
        return len(self._by_tag)

    @property
    def last_tag(self) -> int:
        """The tag of the channel's latest publish (0: none yet)."""
        return self._last_tag

    def add(self, item: T) -> int:
        """Record the channel's next publish; returns its delivery tag."""
        self._last_tag += 1
        self._by_tag[self._last_tag] = item
        return self._last_tag

    def settle(self, confirm: Confirm) -> list[T]:
        """What ``confirm`` settles, in publish order, no longer awaited."""
        if confirm.multiple:
            # Tags are kept in ascending (insertion) order: stop at the first one above.
            tags = list(itertools.takewhile(lambda t: t <= confirm.delivery_tag, self._by_tag))
        else:
            tags = [confirm.delivery_tag] if confirm.delivery_tag in self._by_tag else []
        return [self._by_tag.pop(tag) for tag in tags]

    def reset(self) -> list[T]:
        """Forget everything (a new channel numbers from 1 again); returns what was
        awaited, in publish order."""
        awaited = list(self._by_tag.values())
        self._by_tag.clear()
        self._last_tag = 0
        return awaited

"""Held writes: what pika's transport is handed, and when (no broker needed)."""

from __future__ import annotations

from broker.cork import Cork, _CorkedTransport


class Recording:
    """Stands in for pika's transport: records each write it is handed."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.writes))


def _linked() -> tuple[Cork, _CorkedTransport, Recording]:
    cork, inner = Cork(), Recording()
    transport = _CorkedTransport(inner, protocol="the connection")
    cork._transport = transport  # what linking the connection does
    return cork, transport, inner


def test_writes_pass_straight_through_unless_held() -> None:
    _cork, transport, inner = _linked()
    transport.write(b"frame1")
    transport.write(b"frame2")
    assert inner.writes == [b"frame1", b"frame2"]
    assert transport.get_protocol() == "the connection"


def test_held_writes_go_out_as_one_in_order_when_the_outermost_hold_ends() -> None:
    cork, transport, inner = _linked()
    with cork.held():
        transport.write(b"a")
        with cork.held():
            transport.write(b"b")
        assert inner.writes == []  # the inner hold's end is not the outermost
        transport.write(b"c")
        assert transport.get_write_buffer_size() == 3
    assert inner.writes == [b"abc"]
    transport.write(b"d")
    assert inner.writes == [b"abc", b"d"]


def test_a_hold_that_raises_still_lets_its_writes_go() -> None:
    cork, transport, inner = _linked()
    try:
        with cork.held():
            transport.write(b"sent before the error")
            raise RuntimeError("in a callback")
    except RuntimeError:
        pass
    assert inner.writes == [b"sent before the error"]


def test_an_aborted_transport_drops_what_was_held() -> None:
    cork, transport, inner = _linked()
    with cork.held():
        transport.write(b"never sent")
        transport.abort()
    assert inner.aborted
    assert inner.writes == []


def test_a_hold_without_a_linked_connection_changes_nothing() -> None:
    with Cork().held():
        pass


def test_before_release_runs_as_the_outermost_hold_ends_with_its_writes_held() -> None:
    """A publisher settles a chunk's confirms there: the refill it writes goes out with
    the rest, in one write."""
    cork, transport, inner = _linked()
    ran: list[str] = []

    def before_release() -> None:
        ran.append("settled")
        transport.write(b"refill")

    cork.before_release = before_release
    with cork.held():
        transport.write(b"read ")
        with cork.held():
            transport.write(b"nested ")
        assert ran == []  # not at the end of a nested hold
    assert ran == ["settled"]
    assert inner.writes == [b"read nested refill"]


def test_before_release_does_not_run_after_a_hold_that_raised() -> None:
    cork, transport, inner = _linked()
    ran: list[str] = []
    cork.before_release = lambda: ran.append("settled")
    try:
        with cork.held():
            transport.write(b"sent before the error")
            raise RuntimeError("in a callback")
    except RuntimeError:
        pass
    assert ran == []
    assert inner.writes == [b"sent before the error"]
    assert not cork.holding

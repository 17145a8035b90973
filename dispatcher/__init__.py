"""The central side of setevnt: publish commands, collect acks, serve metrics."""

from dispatcher.api import Dispatcher, Receipt

__all__ = ["Dispatcher", "Receipt"]

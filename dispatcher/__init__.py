"""The central side of setevnt: publish commands, collect acks, serve metrics."""

from dispatcher.api import Dispatcher, Receipt
from dispatcher.client import Client, Handle, RequestTimeout
from schemas.refusals import RequestRefused

__all__ = ["Client", "Dispatcher", "Handle", "Receipt", "RequestRefused", "RequestTimeout"]

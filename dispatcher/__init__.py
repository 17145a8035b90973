"""The central side of setevnt: publish commands, collect acks, serve metrics."""

from dispatcher.api.client import Client, Handle, RequestTimeout
from dispatcher.api.dispatcher import Dispatcher, Receipt
from schemas.refusals import RequestRefused

__all__ = ["Client", "Dispatcher", "Handle", "Receipt", "RequestRefused", "RequestTimeout"]

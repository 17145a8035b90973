"""The client side of setevnt: consume this client's queue, signal components, ack back."""

__version__ = "0.1.0"

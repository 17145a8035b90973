"""The dispatcher as a library: send commands and wait for their acks; the services' client."""

"""The dispatcher service: collector, request intake, drift remediation, metrics."""

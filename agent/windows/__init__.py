"""What the agent needs on Windows clients: default paths, ACLs, the service.

Only ``service`` imports pywin32; the rest is plain Python, tested on Linux.
"""

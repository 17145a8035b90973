"""What the dispatcher keeps: the ledger, the fleet registry, site settings, owed work."""

"""Who may do what on the broker: client and service users, signing keys, agent configs."""

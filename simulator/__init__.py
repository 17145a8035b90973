"""A simulated fleet: thousands of agents in one process, for benchmarks and tests."""

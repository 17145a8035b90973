"""The command lines: ``setevnt`` and ``setevnt-dispatcher``, parsing and printing only."""

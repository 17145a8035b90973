"""What operators read about storms: results, dead letters, tables, the HTML report."""

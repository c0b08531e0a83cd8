"""Per-database helpers shared by adapters (sources and targets), which must not import
each other: what both sides need to know about one database's SQL and row formats."""

"""Use cases: install, drain, status, history (snapshot, restore, verify follow)."""

"""Source databases: reflection into the key registry, and one capture adapter per dialect."""

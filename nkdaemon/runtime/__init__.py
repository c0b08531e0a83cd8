"""The running process: configuration, logging, the daemon loop, health, scheduling."""

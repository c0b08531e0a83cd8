"""The backup repository on disk: log segments, snapshots, key index, lock."""

"""The domain core: pure Python, standard library only. Nothing here does I/O."""

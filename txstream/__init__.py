"""txstream's internals; the entry points are the top-level scripts and `app.py`."""

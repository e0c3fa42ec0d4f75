"""Deployable services of the query path: the shard server (and, later, the search gateway)."""

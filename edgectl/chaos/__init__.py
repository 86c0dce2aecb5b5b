"""Seeded fault runs: clients record a history, a nemesis injects faults, checkers judge.

`history` is the record both sides share; `checks` and `linearizability` judge a history
without I/O; `report` turns runs into lines, Markdown and plots; the runner starts a
cluster, the clients and the nemesis (`edgectl chaos run`).
"""

"""edgepop's benchmark suite (`make bench`, or `python -m bench [--quick] [--only NAME]`).

Each benchmark measures the platform next to a baseline in the same run (a bare gRPC
echo server, Redis replication) and reports ratios, because the machine is small,
shared and noisy; results go to a rich table, bench/out/REPORT.md with plots, and
bench/out/results.json.
"""

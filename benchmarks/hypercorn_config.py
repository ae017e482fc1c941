"""hypercorn's settings for the benchmark.

Given as ``--config python:benchmarks.hypercorn_config``; the command-line
options override it.  hypercorn ends each connection after 1,000 requests
by default (its ``keep_alive_max_requests``, which has no command-line
option), with a GOAWAY on HTTP/2.  h2load does not open a new connection
for the requests it had left for that one and counts them as failed, and
wrk reconnects; no other server under test has such a cap.  Lifting it
measures the requests, not the recycling of connections.
"""

keep_alive_max_requests = 2**31 - 1

"""``psctl bench``: rayps beside its peers on this machine, in one run.

- runner.py: the rows, the ratios, bench.json; rows.py: the row and the job every row shares;
  peers.py: DDP and a Ray-docs-style parameter server; sparse.py: embedding rows per second;
  wire.py: compression over a throttled link; tables.py: the tables again from a bench.json.
"""

"""Ray clusters from cluster.yaml, and jobs on them.

- ``load_cluster_file``, ``up``, ``down`` (provision.py): the Ray half of
  cluster.yaml, checked against Ray's schema, with token auth on.
- ``Ssh`` (ssh.py), nodes.py: the machines of a local-provider cluster.
- ``Jobs`` (jobs.py): submit, follow, list and stop through the Ray Jobs API;
  ``find_token`` (auth.py): the token Ray uses.
- commands.py: ``psctl up/down/submit/status/logs/stop/scale``.
"""

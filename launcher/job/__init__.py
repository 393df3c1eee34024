"""One job's life, from config to run directory.

- ``Job`` (api.py): the Python API; ``JobConfig`` (config.py), with the failure settings in
  faults.py.
- ``run_job`` (driver.py): prepare, start, train, summarize; summary.py says what summary.json
  holds; transports.py starts the shards' servers and serves them again after a restart.
- ``Controller`` (controller.py): the watch loop through failures, asking the small policies in
  policies.py; ``Checkpointer`` (checkpointing.py).
- placement.py: where actors go (runtime.py, at the root, starts or joins Ray).
- progress.py: the one count of a job's steps and epochs; monitor.py: history rows and events;
  terminal.py: the progress line; report.py, rundir.py: plots and
  the run directory; saved_model.py: the trained model's files and ``rayps.load_model``;
  wire_summary.py: compression figures.
- resume.py: ``--resume``; runcode.py: which code a run directory's config.json may run
  (worker/trust.py); dataprep.py: chunked data prepared on Ray; throttle.py: a slow link
  emulated on loopback.
"""

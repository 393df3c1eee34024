"""``psctl export RUN_DIR``: the trained model as files, and compressed variants of it.

- ``export_run`` (variants.py), ``ExportConfig`` (config.py), cli.py: the command.
- the model files it reads and writes, and ``load_model``, are launcher/job/saved_model.py.
- report.py: each variant measured after loading it back.
"""

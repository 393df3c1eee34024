"""``psctl export RUN_DIR``: the trained model as files, and compressed variants of it.

- ``export_run`` (variants.py), ``ExportConfig`` (config.py), cli.py: the command.
- ``load_model`` (saved.py): an exported model read back in any process.
- report.py: each variant measured after loading it back.
"""

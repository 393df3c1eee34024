"""Data tools of the command line: synthetic data sets (generate.py) and the quality report (report.py)."""

"""Launching jobs: job kinds and the one dispatch (job.py), hostfiles, the launch plan (command.py), its
supervision and rank reports, preflight checks. Every rank runs `python -m scaling.rank` (scaling/rank.py)."""

"""Sweeps: the sweep file (config.py), running it with Ray Tune (run.py), its console
(progress.py), mirroring it to a bucket (storage.py) and checking a cluster before it starts
(cluster_check.py). Nothing is imported here."""

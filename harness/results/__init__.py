"""A sweep's results: the folder layout both the sweep and the report use (layout.py), and the
report read from it (report.py): the table (table.py), figures (figures.py), the paper's
ablations beside ours (ablation.py) and TensorBoard's HParams (tensorboard.py). Nothing is
imported here."""

"""Pretraining: the driver (driver.py: checks, then one Ray Train run), its command
(command.py: `harness pretrain`), what every Train worker runs (worker.py), the step it takes
(step.py: no Ray), the online probe (probe.py) and the run's log (run_log.py: metrics.jsonl
and TensorBoard). Nothing is imported here: a worker that needs the step must not pay for the
driver's Ray Train imports."""

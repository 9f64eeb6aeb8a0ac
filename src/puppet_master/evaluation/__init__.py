"""Evaluation on the Drag-a-Move protocol (docs/design.md §7): metrics, trackers, baselines, reports.

The test sets are read by :mod:`puppet_master.data.splits` (with the restricted unpickler of
:mod:`puppet_master.data.safe_pickle`).
"""

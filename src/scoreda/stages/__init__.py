"""Workflow stages: plain functions over the HDF5 files of a run directory.

Each reads the resolved ``RUN/config.yaml``, returns early when its outputs already exist and
validate (so re-running resumes), and is runnable alone: ``python -m scoreda.stages.<name>
--run-dir RUN --cycle K``. Stages: ``nature`` (truth, observations, initial ensemble),
``forecast``, ``analysis``, ``evaluate`` (scores of one cycle) and ``report`` (the whole run).
"""

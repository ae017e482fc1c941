"""Processes: the single-process runner, the supervisor and its workers."""

"""Metrics, speed and memory, process isolation, metric formatting."""

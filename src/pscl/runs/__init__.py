"""A run folder's life: its state markers, and resuming it (``pscl.runs.resume``)."""

from pscl.runs.state import FAILED, METRICS, RUNNING, RunState, read_state, run_markers

__all__ = ["FAILED", "METRICS", "RUNNING", "RunState", "read_state", "run_markers"]

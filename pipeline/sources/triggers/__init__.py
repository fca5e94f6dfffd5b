"""Trigger-based capture: a change-log table filled by triggers, and its relay."""

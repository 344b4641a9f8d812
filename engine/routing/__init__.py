"""Routing decisions that are pure functions of configuration and counters (outbound trunks)."""

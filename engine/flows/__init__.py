"""Call flows: declarative IVR / routing graphs, their loader and a pure interpreter.

``model`` holds the node Structs, ``loader`` decodes TOML/YAML and validates graphs, and
``interpreter`` runs a flow for one call as pure ``(run, event) -> (run, effects, outcome)`` steps
that the call machine (``engine/fsm/call.py``) delegates to while the call is IN_FLOW. The same flow
therefore runs in production and in the simulator.
"""

from engine.flows.loader import FlowError, load_flows, parse_flows, validate
from engine.flows.model import Flow

__all__ = ["Flow", "FlowError", "load_flows", "parse_flows", "validate"]

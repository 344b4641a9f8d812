"""callengine: the call-processing brain of a PBX and contact centre."""

__version__ = "0.1.0"

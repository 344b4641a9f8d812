"""The deterministic call-centre simulator (and, in ``sim.freeswitch``, an ESL emulator).

``scenario`` decodes and checks scenarios; ``core`` runs the production state machines and flows in
virtual time; ``report`` measures and writes JSON/HTML; ``erlang`` holds the textbook formulas;
``script`` is the scripted-caller API for call-flow tests; ``cli`` is ``callengine sim``.
See docs/simulator.md.
"""

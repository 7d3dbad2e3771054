"""What the tests and the benchmarks share: waiting for state, real NATS servers, a flood from
a process of its own, forged sources, values the command line must refuse, reading a summary
back, and what a queued datagram costs.

tests/ and benchmarks/ both import from here and never from each other
(tests/test_layout.py pins it); this package imports from neither. Not shipped with udpchat.
"""

"""DSPy programs used by the pipeline when an LM is configured (``conf/lm/``).

One concern per file: ``edge_judge`` (graph edges), ``explorer`` (call arguments),
``synthesizer`` (task wording). ``lm.configure_lm`` turns an ``lm`` config into a ``dspy.LM``.
"""

"""Property-based fuzzing of every decoder (hypothesis): no exception escapes, every bad input is counted.

Each property runs `CONTROLTOWER_FUZZ_EXAMPLES` examples (200 by default, so that the whole
folder takes well under 30 s in the normal suite). A dedicated fuzzing run:

    CONTROLTOWER_FUZZ_EXAMPLES=100000 .venv/bin/python -m pytest -q tests/fuzz --timeout=0

takes about two hours on two cores (the whole folder needs roughly 70 s per 1000 examples);
run it before a release or after touching a decoder. A failure prints the smallest input that
breaks the property; add it as an `@example(...)` on the property when fixing the decoder.
"""

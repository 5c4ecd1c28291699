"""Property-based fuzzing of every decoder (hypothesis): no exception escapes, every bad input is counted.

Each property runs `CONTROLTOWER_FUZZ_EXAMPLES` examples (200 by default, so that the whole
folder takes well under 30 s in the normal suite). A dedicated fuzzing run:

    CONTROLTOWER_FUZZ_EXAMPLES=100000 .venv/bin/python -m pytest -q tests/fuzz --timeout=0

takes about two hours on two cores (the whole folder needs roughly 70 s per 1000 examples);
run it before a release or after touching a decoder. A failure prints the smallest input that
breaks the property; add it as an `@example(...)` on the property when fixing the decoder.
With CONTROLTOWER_FUZZ_REPORT=<file.json>, the site loader, line protocol and API targets write
their rejections counted by reason; `bench/reliability.py --fuzz-logs <dir>` tabulates a run.

Coverage-guided, with atheris (libFuzzer), a dedicated run only (not collected by pytest):

    .venv/bin/python -m tests.fuzz.atheris_decoders <target> -atheris_runs=100000 <corpus dir>

for the MQTT JSON, batched JSON and Sparkplug B decoders, the site loader (the input is the
file) and line protocol: about 60-600 inputs/s on a shared core, where hypothesis manages 10-200
(atheris_decoders.py says what each target checks).
"""

"""pharma-controltower: the product's shared vocabulary (site model, samples), its CLI, the
runtime that wires collectors, historian, detectors and the screen together, and the screen.

Kept import-light: `import controltower` must not pull in Dash or asyncua.
"""

__version__ = "0.1.0"

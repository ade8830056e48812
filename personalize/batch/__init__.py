"""`personalize batch`: many variants of one base from a manifest, base work done once, resumable,
on a local process pool or a Ray cluster.

    report = run_batch("variants.yaml", jobs=2)          # or ray=True, ray_address="auto"

manifest.py (the file format) -> base.py (base artifact, library, catalog: once) -> runner.py (keys,
delivered log, fan-out, pushes) -> executors.py (process pool | Ray) -> jobs.py (one variant: the one
add pipeline, verify) ; delivered.py (the JSON-lines log) ; outputs.py (appConfig, package config).
"""

from .manifest import Manifest, ManifestError, read_manifest
from .runner import BatchReport, Outcome, run_batch

__all__ = ["BatchReport", "Manifest", "ManifestError", "Outcome", "read_manifest", "run_batch"]

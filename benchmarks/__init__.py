"""Full-scale benchmarks of hf2mlc (issue 6): see benchmarks/README.md; run ``python benchmarks/run.py``."""

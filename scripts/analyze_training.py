#!/usr/bin/env python3
"""Plots and a summary of a run directory, or overlays and a ranked comparison.csv of a
sweep directory. Usage: python scripts/analyze_training.py DIR [--batch_metrics]
(the same as ``python -m trainforge.analysis.analyze``; see ``trainforge/analyze.py``)."""
import sys

from trainforge.analysis.analyze import main

if __name__ == "__main__":
    sys.exit(main())

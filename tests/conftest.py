import os
import sys

# Rank processes import test helpers (harness, workers) by module name.
sys.path.insert(0, os.path.dirname(__file__))

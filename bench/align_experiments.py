"""The alignment experiments of docs/ALIGNMENT.md (gptlab/align/experiments.py), one command each:

    python bench/align_experiments.py --exp winrate|efficiency|overopt|tax [--out runs/align_exp]
"""
from gptlab.align.experiments import main

if __name__ == "__main__":
    raise SystemExit(main())

"""Generating videos: sampling knobs, the generation loops of each stage, and the pipeline that runs the hierarchy
from a bundle (`sample.py` is its command line)."""

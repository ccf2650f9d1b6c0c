"""Measuring what videos show (`python -m cogvideo_lite.evaluate`): the analytic checker of the built-in shapes,
the shapes benchmark and its probes of single stages, and Fréchet distances."""

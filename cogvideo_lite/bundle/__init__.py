"""What passes from training to sampling: stage exports, and sampling bundles that gather them
(`python -m cogvideo_lite.bundle`)."""

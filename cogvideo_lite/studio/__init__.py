"""The studio: a local web page that generates videos with a sampling bundle and shows inside the model.

`python -m cogvideo_lite.studio --ckpt BUNDLE` serves it (`__main__.py`). The page streams the hierarchy as it fills in
(frame 0 where the image model draws it, the key frames, then each interpolation round) and, for any code of any
frame, shows where the spatial and the temporal channel of the stage that made it looked, per layer and head, and how
each layer's gate mixes them.

Parts: `form.py` (the checked request), `worker.py` (the queue, one generation at a time, the kept videos),
`inspector.py` (the attention maps from the real forward pass), `server.py` (FastAPI routes), `static/` (the page).
"""

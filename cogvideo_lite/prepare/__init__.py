"""The one-time encoding of a dataset into token shards (`python -m cogvideo_lite.prepare`), and the shards."""

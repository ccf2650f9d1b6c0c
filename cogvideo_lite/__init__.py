"""cogvideo_lite: a small CogVideo-style text-to-video generator (data, tokenizer, dual-channel transformer, sampling)."""

"""The generator network: the sequence layout, the stage registry and masks, dual-channel attention, the KV cache
and the transformer. Imports nothing from outside this package (not the data pipeline, not the frame tokenizer);
drawing codes from it is `cogvideo_lite.sample`'s job."""

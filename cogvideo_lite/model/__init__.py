"""The generator: dual-channel transformer, stage masks, KV cache, token sampling and generation loops.

Imports nothing from `cogvideo_lite.data` nor from `tokenizer`; the sequence geometry comes from
`cogvideo_lite.layout`.
"""

from cogvideo_lite.model.cache import KVCache
from cogvideo_lite.model.config import GENERATOR_SIZES, GeneratorConfig
from cogvideo_lite.model.generate import generate_image, generate_keyframes, interpolate
from cogvideo_lite.model.masks import STAGES, StageMasks, StagePlan, stage_masks, stage_plan, with_text_padding
from cogvideo_lite.model.sampling import SamplingKnobs, guided_logits, sample_token
from cogvideo_lite.model.transformer import Generator, stage_loss

__all__ = [
    "GENERATOR_SIZES", "STAGES", "Generator", "GeneratorConfig", "KVCache", "SamplingKnobs", "StageMasks",
    "StagePlan", "generate_image", "generate_keyframes", "guided_logits", "interpolate", "sample_token",
    "stage_loss", "stage_masks", "stage_plan", "with_text_padding",
]

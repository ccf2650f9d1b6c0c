"""Stages as tasks: each builds its model, data view and export format from a `RunConfig`."""

from cogvideo_lite.config import RunConfig


def build_task(config: RunConfig):
    if config.stage == "tokenizer":
        from cogvideo_lite.tasks.tokenizer_task import TokenizerTask

        return TokenizerTask(config)
    from cogvideo_lite.tasks.generator_task import GeneratorTask

    return GeneratorTask(config)

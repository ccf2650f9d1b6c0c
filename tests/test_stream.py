"""The sample stream: each epoch is a permutation, and the global batch does not depend on the number of ranks."""

from collections import Counter

from cogvideo_lite.train.stream import SampleStream


def test_each_epoch_visits_every_sample_once():
    stream = SampleStream(num_samples=12, micro_batch=3, grad_accum=2, world_size=2, seed=5)
    seen = [i for step in range(3) for micro in range(2) for rank in range(2)
            for _, i in stream.micro_batch_indices(step, micro, rank)]
    assert len(seen) == 36
    for epoch in range(3):
        assert sorted(seen[epoch * 12:(epoch + 1) * 12]) == list(range(12))


def test_global_batch_is_independent_of_world_size():
    one = SampleStream(num_samples=10, micro_batch=4, grad_accum=1, world_size=1, seed=1)
    two = SampleStream(num_samples=10, micro_batch=2, grad_accum=1, world_size=2, seed=1)
    for step in range(6):
        a = Counter(one.micro_batch_indices(step, 0, 0))
        b = Counter(two.micro_batch_indices(step, 0, 0) + two.micro_batch_indices(step, 0, 1))
        assert a == b


def test_stream_is_a_function_of_seed_and_step():
    a = SampleStream(num_samples=7, micro_batch=2, grad_accum=1, world_size=1, seed=3)
    b = SampleStream(num_samples=7, micro_batch=2, grad_accum=1, world_size=1, seed=3)
    c = SampleStream(num_samples=7, micro_batch=2, grad_accum=1, world_size=1, seed=4)
    assert a.micro_batch_indices(9, 0, 0) == b.micro_batch_indices(9, 0, 0)
    assert [a.micro_batch_indices(s, 0, 0) for s in range(7)] != [c.micro_batch_indices(s, 0, 0) for s in range(7)]

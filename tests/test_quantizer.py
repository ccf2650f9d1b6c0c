"""VectorQuantizer against brute force and hand computations: lookup, EMA, init, restart, usage, gradients, ranks."""

import math
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tokenizer.quantizer import LAPLACE_EPSILON, RESTARTED_COUNT, VectorQuantizer


def make_quantizer(in_channels=6, codebook_size=16, code_dim=4, decay=0.9, threshold=0.0, window=64, seed=0):
    torch.manual_seed(seed)
    return VectorQuantizer(in_channels, codebook_size, code_dim, decay, threshold, window)


def identity_projection(quantizer):
    """Make the 1x1 projection the identity so hand computations see the raw vectors."""
    with torch.no_grad():
        dim = quantizer.code_dim
        quantizer.project.weight.copy_(torch.eye(dim).view(dim, dim, 1, 1))
        quantizer.project.bias.zero_()


def test_lookup_matches_brute_force_nearest_code():
    quantizer = make_quantizer().eval()
    features = torch.randn(3, 6, 5, 7)
    codes = quantizer.lookup(features)                                    # (3, 5, 7)
    projected = quantizer.project(features).detach()                      # (3, 4, 5, 7)
    codebook = quantizer.codebook
    for n in range(3):
        for i in range(5):
            for j in range(7):
                vector = projected[n, :, i, j]
                vector = vector / math.sqrt(sum(float(v) ** 2 for v in vector))
                distances = []
                for k in range(codebook.shape[0]):
                    code = codebook[k] / math.sqrt(sum(float(c) ** 2 for c in codebook[k]))
                    distances.append(sum((float(a) - float(b)) ** 2 for a, b in zip(vector, code)))
                assert int(codes[n, i, j]) == min(range(len(distances)), key=distances.__getitem__)
    output = quantizer(features)
    assert torch.equal(output.codes, codes)
    expected = F.normalize(codebook, dim=1)[codes]                        # (3, 5, 7, 4)
    torch.testing.assert_close(output.quantized.permute(0, 2, 3, 1), expected)


def test_one_ema_step_matches_hand_computation():
    quantizer = make_quantizer(in_channels=2, codebook_size=3, code_dim=2, decay=0.9).train()
    identity_projection(quantizer)
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
        quantizer.cluster_size.copy_(torch.tensor([2.0, 1.0, 0.5]))
        quantizer.embedding_sum.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0], [-0.5, 0.0]]))
        quantizer.initialized.fill_(True)
    # Four unit vectors: two near code 0, one near code 1, one near code 0 again; code 2 gets none.
    vectors = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.8, -0.6], [-0.6, 0.8]])   # all unit length
    features = vectors.t().reshape(1, 2, 1, 4)                           # (N=1, C=2, h=1, w=4)
    output = quantizer(features)
    assert output.codes.reshape(-1).tolist() == [1, 0, 0, 1]
    decay = 0.9
    counts = torch.tensor([2.0, 2.0, 0.0])
    sums = torch.tensor([[1.0 + 0.8, 0.0 - 0.6], [0.6 - 0.6, 0.8 + 0.8], [0.0, 0.0]])
    cluster = decay * torch.tensor([2.0, 1.0, 0.5]) + (1 - decay) * counts
    embedding_sum = decay * torch.tensor([[2.0, 0.0], [0.0, 1.0], [-0.5, 0.0]]) + (1 - decay) * sums
    total = cluster.sum()
    smoothed = (cluster + LAPLACE_EPSILON) / (total + 3 * LAPLACE_EPSILON) * total
    torch.testing.assert_close(quantizer.cluster_size, cluster)
    torch.testing.assert_close(quantizer.embedding_sum, embedding_sum)
    torch.testing.assert_close(quantizer.codebook, embedding_sum / smoothed[:, None])
    # Commitment: mean squared distance between the vectors and their (old, unit) codes.
    old_codes = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(output.commitment_loss, (vectors - old_codes).pow(2).mean())
    # Perplexity of the histogram [2, 2, 0] is exp(log 2) = 2.
    torch.testing.assert_close(output.perplexity, torch.tensor(2.0))


def test_eval_mode_changes_nothing():
    quantizer = make_quantizer().train()
    quantizer(torch.randn(2, 6, 4, 4))
    quantizer.eval()
    before = {name: buffer.clone() for name, buffer in quantizer.named_buffers()}
    quantizer(torch.randn(2, 6, 4, 4))
    for name, buffer in quantizer.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_first_training_batch_initialises_codes_from_encoder_vectors():
    quantizer = make_quantizer(codebook_size=8).train()
    features = torch.randn(2, 6, 4, 4)                                   # 32 vectors >= 8 codes: distinct picks
    vectors = F.normalize(quantizer.project(features).detach(), dim=1).permute(0, 2, 3, 1).reshape(-1, 4)
    quantizer.ema_decay = 1.0 - 1e-12   # keep the initial codebook visible after the same step's EMA update
    quantizer(features)
    assert bool(quantizer.initialized)
    distances = torch.cdist(F.normalize(quantizer.codebook, dim=1), vectors,
                            compute_mode="donot_use_mm_for_euclid_dist")   # (8, 32)
    assert distances.min(dim=1).values.max() < 1e-5                      # every code is one of the batch's vectors
    assert len({int(i) for i in distances.argmin(dim=1)}) == 8           # and they are distinct


def test_dead_codes_restart_from_current_encoder_vectors():
    quantizer = make_quantizer(in_channels=2, codebook_size=6, code_dim=2, decay=0.5, threshold=0.3).train()
    identity_projection(quantizer)
    with torch.no_grad():   # codes 0 and 1 point right, the others left; the data all points up-right
        quantizer.codebook.copy_(torch.tensor([[1.0, 0.1], [1.0, 0.2]] + [[-1.0, 0.0]] * 4))
        quantizer.cluster_size.fill_(1.0)
        quantizer.embedding_sum.copy_(quantizer.codebook)
        quantizer.initialized.fill_(True)
    angles = torch.linspace(0.1, 1.4, 24)
    data = torch.stack([angles.cos(), angles.sin()])                     # (2, 24) unit vectors
    features = data.reshape(1, 2, 4, 6)
    quantizer(features)      # codes 2..5 unused: count 0.5 -> alive
    assert (quantizer.cluster_size[2:] == 0.5).all()
    quantizer(features)      # count 0.25 < 0.3 -> restarted onto data vectors
    data_vectors = data.t()                                              # (24, 2)
    for k in range(2, 6):
        assert torch.cdist(quantizer.codebook[k:k + 1], data_vectors, compute_mode="donot_use_mm_for_euclid_dist").min() < 1e-6
        assert quantizer.cluster_size[k] == RESTARTED_COUNT
    output = quantizer(features)
    assert set(output.codes.reshape(-1).tolist()) & {2, 3, 4, 5}, "restarted codes are chosen again"


def test_usage_counts_distinct_codes_over_the_last_window_of_tokens():
    quantizer = make_quantizer(codebook_size=16, window=10).train()
    quantizer.ema_decay = 0.999
    steps = [quantizer(torch.randn(1, 6, 2, 2)).codes.reshape(-1).tolist()]     # 4 tokens a step
    assert quantizer.usage() == len(set(steps[0])) / 16
    for _ in range(3):
        steps.append(quantizer(torch.randn(1, 6, 2, 2)).codes.reshape(-1).tolist())
    # 16 tokens seen; the window holds tokens 7..16, which reach into steps 2, 3 and 4 (tokens 5-8, 9-12, 13-16).
    assert int(quantizer.tokens_seen) == 16
    assert quantizer.usage() == len(set(steps[1] + steps[2] + steps[3])) / 16
    quantizer.eval()
    quantizer(torch.randn(1, 6, 2, 2))
    assert int(quantizer.tokens_seen) == 16, "eval mode records nothing"


def test_straight_through_gradient_reaches_the_input():
    quantizer = make_quantizer().train()
    features = torch.randn(2, 6, 3, 3, requires_grad=True)
    output = quantizer(features)
    (output.quantized * torch.randn_like(output.quantized)).sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert quantizer.project.weight.grad.abs().sum() > 0


def test_bfloat16_cast_keeps_ema_state_float32_bit_for_bit():
    quantizer = make_quantizer().train()
    quantizer(torch.randn(2, 6, 3, 3))
    codebook = quantizer.codebook.clone()
    quantizer.to(torch.bfloat16)
    assert quantizer.project.weight.dtype == torch.bfloat16
    for name in VectorQuantizer.FLOAT32_BUFFERS:
        assert getattr(quantizer, name).dtype == torch.float32, name
    assert torch.equal(quantizer.codebook, codebook)
    output = quantizer(torch.randn(2, 6, 3, 3, dtype=torch.bfloat16))
    assert output.quantized.dtype == torch.bfloat16 and quantizer.codebook.dtype == torch.float32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


STEPS, BATCH = 4, 4


def _global_batch(step: int) -> torch.Tensor:
    return torch.randn(BATCH, 6, 3, 3, generator=torch.Generator().manual_seed(1000 + step))


def _train_steps(quantizer: VectorQuantizer, rank: int, world_size: int) -> None:
    share = BATCH // world_size
    for step in range(STEPS):
        torch.manual_seed(step)          # randomness of a step depends on the step alone, as in train.py
        if rank == 1:
            torch.rand(1)                # ...except that rank 1's generator is out of step: rank 0's choice must win
        quantizer(_global_batch(step)[rank * share:(rank + 1) * share])


def _rank_worker(rank: int, world_size: int, port: int, directory: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    quantizer = make_quantizer(codebook_size=32, threshold=0.95, seed=0).train()   # restarts on every step
    _train_steps(quantizer, rank, world_size)
    torch.save(quantizer.state_dict(), os.path.join(directory, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_ranks_keep_one_codebook_equal_to_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_rank_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2))
    for name in first:   # codebook, EMA statistics and usage counters alike
        assert torch.equal(first[name], second[name]), name
    single = make_quantizer(codebook_size=32, threshold=0.95, seed=0).train()
    _train_steps(single, rank=0, world_size=1)
    for name, tensor in single.state_dict().items():
        torch.testing.assert_close(first[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert int(first["tokens_seen"]) == STEPS * BATCH * 9


def test_steady_lookup_keeps_the_previous_code_exactly_where_the_rule_allows():
    """Brute force: a position keeps its previous code iff that code's cosine similarity is within the margin of the
    best; elsewhere it takes the nearest code. Margin 0 is `lookup` (ties aside); a margin of 2 keeps everything."""
    quantizer = make_quantizer().eval()
    features = torch.randn(2, 6, 3, 4)
    previous = torch.randint(0, 16, (2, 3, 4))
    nearest = quantizer.lookup(features)
    assert torch.equal(quantizer.lookup_steady(features, previous, 0.0), torch.where(previous == nearest, previous,
                                                                                          nearest))
    assert torch.equal(quantizer.lookup_steady(features, previous, 2.0), previous)
    steady = quantizer.lookup_steady(features, previous, 0.1)
    vectors = F.normalize(quantizer.project(features).detach(), dim=1)         # (2, 4, 3, 4)
    codebook = F.normalize(quantizer.codebook, dim=1)
    kept = 0
    for n in range(2):
        for i in range(3):
            for j in range(4):
                similarity = [float(vectors[n, :, i, j] @ codebook[k]) for k in range(16)]
                keep = similarity[int(previous[n, i, j])] >= max(similarity) - 0.1
                kept += keep
                expected = int(previous[n, i, j]) if keep else max(range(16), key=similarity.__getitem__)
                assert int(steady[n, i, j]) == expected
    assert 0 < kept < 24  # the margin decides somewhere, in both directions

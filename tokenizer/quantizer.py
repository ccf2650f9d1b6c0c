"""Vector quantizer with a low-dimensional, l2-normalised codebook updated by exponential moving averages.

What it is: `VectorQuantizer`, which projects encoder features to `code_dim`, normalises them, picks the nearest
code by cosine similarity, passes gradients straight through, and in training mode keeps the codebook alive:
data-dependent initialisation on the first batch, EMA updates with Laplace smoothing, dead-code restart from
current encoder vectors, and a rolling window over the last `usage_window` tokens for honest usage numbers.
What it does not know: images, frames, or losses beyond its own commitment and entropy terms.
Distributed: when torch.distributed is initialised the EMA statistics are summed over ranks, initialisation and
restart draw from the encoder vectors of all ranks (gathered in rank order, so that ranks seeded alike choose what
one process with the whole batch would) and rank 0's choice is broadcast, so the codebook stays bit-identical across
ranks. Usage and the training perplexity count the tokens of all ranks; the entropy penalty is per rank.
Where the idea comes from: VQ-VAE-2 / sonnet (EMA, Laplace smoothing), Jukebox and VideoGPT (initialisation and
restart from encoder outputs), LlamaGen (8-dimensional l2-normalised lookup).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tokenizer.losses import codebook_entropy_loss, commitment_loss
from tokenizer.metrics import perplexity_of_counts

LAPLACE_EPSILON = 1e-5       # sonnet's VectorQuantizerEMA epsilon
ENTROPY_TEMPERATURE = 0.01   # LlamaGen: cosine similarities are sharpened by 1/0.01 before the entropy penalty
RESTARTED_COUNT = 1.0        # EMA count given to a restarted code (Jukebox)


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor              # (N, code_dim, h, w) unit code vectors, gradients pass to the encoder
    codes: torch.Tensor                  # (N, h, w) int64
    commitment_loss: torch.Tensor        # scalar float32, unweighted
    perplexity: torch.Tensor             # scalar float32, of this batch's code histogram (all ranks in training)
    entropy_loss: torch.Tensor | None    # scalar float32 when the entropy penalty is on, else None


class VectorQuantizer(nn.Module):
    # EMA state: stays float32 when the module is cast (see `_apply`).
    FLOAT32_BUFFERS = ("codebook", "cluster_size", "embedding_sum")
    # Training measurement: in training checkpoints (exact resume), left out of exported tokenizers (io.py).
    USAGE_BUFFERS = ("last_seen", "tokens_seen")

    def __init__(self, in_channels: int, codebook_size: int, code_dim: int, ema_decay: float,
                 dead_code_threshold: float, usage_window: int, compute_entropy_loss: bool = False) -> None:
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.ema_decay, self.dead_code_threshold = ema_decay, dead_code_threshold
        self.compute_entropy_loss = compute_entropy_loss
        self.project = nn.Conv2d(in_channels, code_dim, kernel_size=1)
        self.register_buffer("codebook", F.normalize(torch.randn(codebook_size, code_dim), dim=1))  # (K, D)
        self.register_buffer("cluster_size", torch.zeros(codebook_size))                          # (K,)
        self.register_buffer("embedding_sum", torch.zeros(codebook_size, code_dim))               # (K, D)
        self.register_buffer("initialized", torch.tensor(False))
        # Rolling usage window, kept as the running token count (all ranks) at the end of the last training step
        # in which each code was used (0 = never). In the state dict so that a resumed training run reports the
        # same usage as an uninterrupted one.
        self.usage_window = usage_window
        self.register_buffer("last_seen", torch.zeros(codebook_size, dtype=torch.long))          # (K,)
        self.register_buffer("tokens_seen", torch.tensor(0))

    # ---------------------------------------------------------------- forward
    def forward(self, features: torch.Tensor) -> QuantizerOutput:
        """features (N, C, h, w) -> QuantizerOutput; in training mode also updates the codebook and usage window."""
        batch, _, height, width = features.shape
        vectors = self._unit_vectors(features)                                # (M, D) float32, M = N*h*w
        if self.training and not bool(self.initialized):
            self._initialise(vectors.detach())
        codebook = F.normalize(self.codebook, dim=1)                          # (K, D)
        similarity = vectors @ codebook.t()                                   # (M, K) cosine
        codes = similarity.argmax(dim=1)                                      # (M,)
        chosen = codebook[codes]                                              # (M, D)
        # Straight-through: the value is exactly `chosen`, the gradient is the identity to `vectors`.
        straight_through = chosen + (vectors - vectors.detach())
        entropy_loss = codebook_entropy_loss(similarity / ENTROPY_TEMPERATURE) if self.compute_entropy_loss else None
        counts = torch.bincount(codes, minlength=self.codebook_size).float()                # (K,)
        if self.training:
            _all_reduce_sum(counts)
            self._update(vectors.detach(), codes, counts)
        return QuantizerOutput(
            quantized=self._to_feature_map(straight_through, batch, height, width).to(features.dtype),
            codes=codes.view(batch, height, width),
            commitment_loss=commitment_loss(vectors, chosen),
            perplexity=perplexity_of_counts(counts),
            entropy_loss=entropy_loss)

    @torch.no_grad()
    def lookup(self, features: torch.Tensor) -> torch.Tensor:
        """features (N, C, h, w) -> codes (N, h, w) int64; never changes state."""
        batch, _, height, width = features.shape
        return self._similarity(features).argmax(dim=1).view(batch, height, width)

    @torch.no_grad()
    def lookup_steady(self, features: torch.Tensor, previous: torch.Tensor, margin: float) -> torch.Tensor:
        """Like `lookup`, but a position keeps its `previous` code (N, h, w) wherever that code's cosine similarity
        is within `margin` of the best one: static content keeps its code from frame to frame instead of flipping
        between near-equal neighbours on invisible noise."""
        batch, _, height, width = features.shape
        similarity = self._similarity(features)                                              # (M, K)
        best, codes = similarity.max(dim=1)                                                  # (M,)
        kept = similarity.gather(1, previous.reshape(-1, 1))[:, 0]                           # (M,)
        return torch.where(kept >= best - margin, previous.reshape(-1), codes).view(batch, height, width)

    def _similarity(self, features: torch.Tensor) -> torch.Tensor:
        """features (N, C, h, w) -> cosine similarity of every position to every code (N*h*w, K), float32."""
        return self._unit_vectors(features) @ F.normalize(self.codebook, dim=1).t()

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, h, w) int64 -> unit code vectors (N, code_dim, h, w) in the projection's dtype."""
        if codes.dtype != torch.long or codes.ndim != 3:
            raise ValueError(f"embed: expected int64 codes (N, h, w), got {codes.dtype} {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"embed: codes must lie in [0, {self.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        batch, height, width = codes.shape
        chosen = F.normalize(self.codebook, dim=1)[codes.reshape(-1)]                      # (M, D)
        return self._to_feature_map(chosen, batch, height, width).to(self.project.weight.dtype)

    def usage(self) -> float:
        """Distinct codes used within the last `usage_window` training tokens / codebook size.

        Step granularity: a code used in a step counts as seen at that step's last token.
        """
        recent = (self.last_seen > 0) & (self.last_seen > self.tokens_seen - self.usage_window)
        return int(recent.sum()) / self.codebook_size

    # ---------------------------------------------------------------- helpers
    def _unit_vectors(self, features: torch.Tensor) -> torch.Tensor:
        projected = self.project(features).float()                           # (N, D, h, w) float32
        return F.normalize(projected, dim=1).permute(0, 2, 3, 1).reshape(-1, self.code_dim)   # (M, D)

    @staticmethod
    def _to_feature_map(vectors: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
        return vectors.view(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()   # (N, D, h, w)

    @torch.no_grad()
    def _initialise(self, vectors: torch.Tensor) -> None:
        """Codes become random encoder vectors of this batch (all ranks')."""
        chosen = self._random_vectors(vectors)                                               # (K, D)
        self.codebook.copy_(chosen)
        self.embedding_sum.copy_(chosen * RESTARTED_COUNT)
        self.cluster_size.fill_(RESTARTED_COUNT)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, vectors: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> None:
        """One EMA step with counts (K,) already summed over ranks, then restart dead codes and record usage."""
        sums = torch.zeros_like(self.embedding_sum).index_add_(0, codes, vectors)             # (K, D)
        _all_reduce_sum(sums)
        self.cluster_size.mul_(self.ema_decay).add_(counts, alpha=1.0 - self.ema_decay)
        self.embedding_sum.mul_(self.ema_decay).add_(sums, alpha=1.0 - self.ema_decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + LAPLACE_EPSILON) / (total + self.codebook_size * LAPLACE_EPSILON) * total
        self.codebook.copy_(self.embedding_sum / smoothed.unsqueeze(1))
        self._restart_dead_codes(vectors)
        self._record_usage(counts)

    @torch.no_grad()
    def _restart_dead_codes(self, vectors: torch.Tensor) -> None:
        """Codes whose EMA count fell under the threshold move to random encoder vectors of this batch."""
        dead = (self.cluster_size < self.dead_code_threshold).unsqueeze(1)                   # (K, 1)
        if not bool(dead.any()):   # the same answer on every rank: cluster_size is identical there
            return
        candidates = self._random_vectors(vectors)                                           # (K, D)
        self.codebook.copy_(torch.where(dead, candidates, self.codebook))
        self.embedding_sum.copy_(torch.where(dead, candidates * RESTARTED_COUNT, self.embedding_sum))
        self.cluster_size.copy_(torch.where(dead.squeeze(1), RESTARTED_COUNT, self.cluster_size))

    def _random_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """codebook_size rows drawn from all ranks' vectors (M, D): distinct when there are enough of them."""
        pool = _gather_from_all_ranks(vectors)                                               # (M_all, D)
        available, device = pool.shape[0], pool.device
        if available >= self.codebook_size:
            rows = torch.randperm(available, device=device)[:self.codebook_size]
        else:
            rows = torch.randint(available, (self.codebook_size,), device=device)
        return _broadcast_from_first_rank(pool[rows])

    @torch.no_grad()
    def _record_usage(self, counts: torch.Tensor) -> None:
        """counts (K,): this step's code histogram over all ranks."""
        self.tokens_seen.add_(counts.sum().long())
        self.last_seen.copy_(torch.where(counts > 0, self.tokens_seen, self.last_seen))

    def _apply(self, fn, recurse=True):
        """Moves like any module, but a dtype cast (e.g. to bf16) leaves the EMA state in float32, bit for bit."""
        kept = {name: getattr(self, name) for name in self.FLOAT32_BUFFERS}
        super()._apply(fn, recurse)
        for name, value in kept.items():
            setattr(self, name, value.to(device=getattr(self, name).device, dtype=torch.float32))
        return self


def _all_reduce_sum(tensor: torch.Tensor) -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def _gather_from_all_ranks(rows: torch.Tensor) -> torch.Tensor:
    """rows (M_r, D) of every rank, concatenated in rank order (ranks may hold different M_r)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return rows
    world_size = dist.get_world_size()
    size = torch.tensor([rows.shape[0]], device=rows.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(sizes))
    padded = torch.zeros(longest, rows.shape[1], dtype=rows.dtype, device=rows.device)
    padded[:rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([part[:int(length)] for part, length in zip(gathered, sizes)])


def _broadcast_from_first_rank(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.contiguous()
        dist.broadcast(tensor, src=0)
    return tensor

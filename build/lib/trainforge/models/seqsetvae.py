"""SeqSetVAE: a set encoder per set of events, a causal transformer over the sets, a set
decoder and a classification head (``model=seqsetvae``, batches of ``data=seqset
layout=sets``).

Shapes: B patients, S sets, N events per set, L = number of real sets in the batch, D the
model width, Z the latent width, E the variable-embedding width. All L real sets are
encoded in one batched call (flattened to [L, N, D]); padded sets are never encoded.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class MAB(nn.Module):
    """Pre-norm multihead attention block: q + Attn(q, k), then a feed-forward residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q, self.norm_k, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, q, k, key_padding_mask=None):
        kn = self.norm_k(k)
        h = q + self.attn(self.norm_q(q), kn, kn, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return h + self.ff(self.norm_ff(h))


class ISAB(nn.Module):
    """Induced set attention (Lee et al. 2019): ``m`` learned inducing points attend to the
    set's real events, then every event attends to them. Permutation equivariant; the
    inducing points never attend to padding, and the events attend to no mask at all, so
    no attention row is ever fully masked (a real set has at least one event)."""

    def __init__(self, dim: int, heads: int, inducing: int):
        super().__init__()
        self.inducing = nn.Parameter(torch.randn(1, inducing, dim) * dim ** -0.5)
        self.gather, self.scatter = MAB(dim, heads), MAB(dim, heads)

    def forward(self, x, mask):
        h = self.gather(self.inducing.expand(len(x), -1, -1), x, key_padding_mask=mask)
        return self.scatter(x, h)


def live_sets(batch: dict) -> torch.Tensor:
    """Flat indices ``b * S + s`` of the real sets, (L,): the data layer's ``set_index``
    when the batch has one (no device-to-host sync on a GPU), else from ``set_mask``."""
    index = batch.get("set_index")
    return index if index is not None else torch.nonzero(~batch["set_mask"].flatten()).squeeze(1)


def time_features(minute: torch.Tensor, bands: int) -> torch.Tensor:
    """[..., 2 * bands + 1]: sin/cos of the minute at periods from 30 minutes to 2 weeks
    (log-spaced), and log1p of the gap to the previous set in hours (0 for the first)."""
    periods = torch.logspace(math.log10(30.0), math.log10(20160.0), bands, device=minute.device)
    angle = minute[..., None] * (2 * math.pi / periods)
    gap = torch.diff(minute, dim=-1, prepend=minute[..., :1]).clamp_min(0.0)
    return torch.cat([angle.sin(), angle.cos(), torch.log1p(gap / 60.0)[..., None]], dim=-1)


class SeqSetVAE(nn.Module):
    """``forward(batch) -> dict`` with

    - ``logit`` (B,): the label's logit, from the sequence output (masked mean, last real
      position) and the latent statistics (mean of mu over the sets; mu and logvar of the
      last set);
    - ``mu``, ``logvar`` (L, Z): each real set's posterior q(z | set), in batch order;
    - ``recon`` (L, K, E + 1): ``slots`` predicted events per set, decoded from the sequence
      output at that set (which sees that set and earlier ones only);
    - ``target`` (L, N, E + 1) and ``target_mask`` (L, N): the set's events as [variable
      embedding, value], True = padding (for a Chamfer loss).

    z is sampled in training and is the mean in eval. ``freeze_encoder`` freezes the
    event tokens, the set encoder and the latent heads (fine-tuning); ``head_lr_scale``
    multiplies the learning rate of the classification head (see :meth:`param_groups`).
    """

    def __init__(self, embed_dim=32, dim=32, latent_dim=16, levels=1, inducing=4, heads=2, seq_layers=1,
                 seq_heads=2, time_bands=8, slots=8, dropout=0.0, freeze_encoder=False, head_lr_scale=1.0):
        super().__init__()
        self.head_lr_scale = head_lr_scale
        # token = A e + value * B e (+ an MLP of that): a per-variable direction for the value,
        # so "high glucose" and "high sodium" differ even with the same z-score
        self.token_var, self.token_value = nn.Linear(embed_dim, dim), nn.Linear(embed_dim, dim)
        self.token = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.encoder = nn.ModuleList(ISAB(dim, heads, inducing) for _ in range(levels))
        self.latent = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * latent_dim))
        self.z_in = nn.Linear(latent_dim, dim)
        self.time = nn.Linear(2 * time_bands + 1, dim)
        self.time_bands = time_bands
        layer = nn.TransformerEncoderLayer(dim, seq_heads, 2 * dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.sequence = nn.TransformerEncoder(layer, seq_layers, enable_nested_tensor=False)
        self.seeds = nn.Parameter(torch.randn(slots, dim) * dim ** -0.5)
        self.decoder = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(),
                                     nn.Linear(2 * dim, embed_dim + 1))
        self.head = nn.Sequential(nn.Linear(2 * dim + 3 * latent_dim, dim), nn.GELU(), nn.Linear(dim, 1))
        if freeze_encoder:
            for part in (self.token_var, self.token_value, self.token, self.encoder, self.latent):
                part.requires_grad_(False)

    def param_groups(self, lr: float) -> list:
        """Optimizer parameter groups: everything trainable at ``lr``, the head at
        ``lr * head_lr_scale`` (second group). Frozen parameters are left out."""
        head = [p for p in self.head.parameters() if p.requires_grad]
        ids = {id(p) for p in head}
        body = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": body, "lr": lr}, {"params": head, "lr": lr * self.head_lr_scale}]

    def encode_sets(self, batch: dict):
        """(mu, logvar, events, mask, index): the posterior of every real set (L, Z), its
        events as [embedding, value] (L, N, E + 1) and their padding mask (L, N), and the
        flat indices of the real sets (L,)."""
        index = live_sets(batch)
        n = batch["var_id"].shape[-1]
        mask = (batch["event_mask"] | batch["set_mask"][..., None]).reshape(-1, n).index_select(0, index)
        var_id = batch["var_id"].reshape(-1, n).index_select(0, index).masked_fill(mask, 0)  # padding: anything
        value = batch["value"].reshape(-1, n).index_select(0, index).masked_fill(mask, 0.0)
        e = batch["var_embedding"][var_id]  # every real set at once: [L, N, E]
        x = self.token_var(e) + value[..., None] * self.token_value(e)
        x = x + self.token(x)
        for block in self.encoder:
            x = block(x, mask)
        keep = (~mask)[..., None]
        pooled = torch.where(keep, x, 0.0).sum(1) / keep.sum(1).clamp_min(1)
        mu, logvar = self.latent(pooled).chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 10.0), torch.cat([e, value[..., None]], dim=-1), mask, index

    def run_sequence(self, z: torch.Tensor, index: torch.Tensor, set_mask: torch.Tensor,
                     minute: torch.Tensor) -> torch.Tensor:
        """The causal transformer over each patient's sets: (B, S, D). Position t attends
        to positions <= t that are real; sets are left-aligned, so position 0 is real and
        no row is fully masked."""
        b, s = set_mask.shape
        x = z.new_zeros(b * s, z.shape[-1]).index_copy(0, index, z).view(b, s, -1)
        x = self.z_in(x) + self.time(time_features(minute.masked_fill(set_mask, 0.0), self.time_bands))
        causal = torch.ones(s, s, dtype=torch.bool, device=z.device).triu(1)
        # is_causal: the hint spares torch comparing the mask with a causal one on the host (a sync)
        return self.sequence(x, mask=causal, src_key_padding_mask=set_mask, is_causal=True)

    def forward(self, batch: dict) -> dict:
        mu, logvar, target, target_mask, index = self.encode_sets(batch)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        live = ~batch["set_mask"]
        h = self.run_sequence(z, index, batch["set_mask"], batch["minute"])
        h_live = h.flatten(0, 1).index_select(0, index)  # [L, D]
        recon = self.decoder(h_live[:, None, :] + self.seeds[None])  # [L, K, E + 1]
        count = live.sum(1)
        mean_h = torch.where(live[..., None], h, 0.0).sum(1) / count.clamp_min(1)[:, None]
        # output_size: the length is known on the host, so no device sync
        patient = torch.repeat_interleave(torch.arange(len(count), device=mu.device), count, output_size=len(index))
        mean_mu = mu.new_zeros(len(count), mu.shape[-1]).index_add_(0, patient, mu) / count.clamp_min(1)[:, None]
        last = torch.cumsum(count, 0) - 1  # each patient's last real set, among the L
        feats = torch.cat([mean_h, h_live[last], mean_mu, mu[last], logvar[last]], dim=-1)
        return {"logit": self.head(feats).squeeze(-1), "mu": mu, "logvar": logvar, "recon": recon,
                "target": target, "target_mask": target_mask}

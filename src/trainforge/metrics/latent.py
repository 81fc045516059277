"""Posterior-collapse statistics of a VAE's latents over the whole validation set."""
from __future__ import annotations

import math

import torch

from trainforge.errors import ConfigError


class LatentStats:
    """Per-dimension KL and activity of q(z | x) over every real set of the validation set.

    ``update`` adds, on the device, per dimension d: sum of KL_d, sum of mu_d, sum of
    mu_d^2 (float64), and the count of sets. ``compute`` reads them in one host transfer
    and returns the epoch columns:

    - ``kl_total``: mean over sets of the raw KL summed over dimensions (nats, no beta);
    - ``active_units`` / ``active_fraction``: dimensions whose Var over the sets of E[z_d | x]
      (= mu_d) exceeds ``threshold`` (Burda et al. 2016: A_u = Cov_x(E_q[z_u]) > 0.01);
    - ``kl_dims90``: the fewest dimensions that hold ``mass`` (90%) of the KL.

    The per-dimension values of the last ``compute`` stay in ``per_dim``
    ({"kl": [...], "var_mu": [...], "active": [...]}) for ``collapse.csv``.
    """

    names = ("kl_total", "active_units", "active_fraction", "kl_dims90")
    sum_states = ("_sums", "_count")  # DDP: summed over ranks before compute

    def __init__(self, threshold: float = 0.01, mass: float = 0.9):
        self.threshold, self.mass = threshold, mass
        self.per_dim: dict = {}
        self.reset()

    def reset(self) -> None:
        self._sums = None  # (3, Z) float64: KL_d, mu_d, mu_d^2
        self._count = None

    @torch.no_grad()
    def update(self, output, target) -> None:
        if not isinstance(output, dict) or "mu" not in output or "logvar" not in output:
            raise ConfigError("collapse.enabled=true: the model's output has no 'mu' and 'logvar' "
                              "(use a VAE such as model=seqsetvae, or collapse.enabled=false)")
        mu, logvar = output["mu"].double(), output["logvar"].double()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
        sums = torch.stack([kl.sum(0), mu.sum(0), mu.pow(2).sum(0)])
        count = mu.new_full((), float(len(mu)), dtype=torch.float64)  # a fill kernel: no host-to-device copy
        self._sums = sums if self._sums is None else self._sums + sums
        self._count = count if self._count is None else self._count + count

    def compute(self) -> dict:
        if self._sums is None:
            return dict.fromkeys(self.names, math.nan)
        flat = torch.cat([self._sums.reshape(-1), self._count[None]]).tolist()  # the one host read
        n, z = flat[-1], self._sums.shape[1]
        kl_sum, mu_sum, mu2_sum = flat[:z], flat[z:2 * z], flat[2 * z:3 * z]
        kl = [k / n for k in kl_sum]
        var = [max(0.0, (m2 - m * m / n) / (n - 1)) if n > 1 else 0.0 for m, m2 in zip(mu_sum, mu2_sum)]
        active = [v > self.threshold for v in var]
        self.per_dim = {"kl": kl, "var_mu": var, "active": active}
        total = sum(kl)
        dims, acc = 0, 0.0
        for value in sorted(kl, reverse=True):
            if total <= 0 or acc >= self.mass * total:
                break
            dims, acc = dims + 1, acc + value
        return {"kl_total": total, "active_units": sum(active), "active_fraction": sum(active) / z,
                "kl_dims90": dims}

"""RQ-VAE: an MLP autoencoder with an L-level residual vector quantiser in the middle.

    x [N, d] --encoder--> z [N, D] --L residual codebooks of K codes--> z_q = c_1 + ... + c_L
        --decoder--> x_hat [N, d]          codes = (index of c_1, ..., index of c_L)

Level l picks the code nearest to the residual r_l (r_1 = z, r_{l+1} = r_l - c_l). Training
minimises

    loss = MSE(x_hat, x) + sum_l [ MSE(c_l, sg(r_l)) + beta * MSE(r_l, sg(c_l)) ]
           recon          codebook (moves codes)  commitment (moves the encoder)

with x standardised per dimension (cfg.standardize; see RQVAE.__init__), so recon = 1.0 means
"predicts the mean vector" and the number reads as the share of variance left unexplained.

The argmin has no gradient, so the decoder's gradient is carried back to the encoder by an
estimator: the rotation trick (default) or the straight-through estimator (cfg.grad = "ste").
Codebooks start at k-means centroids of the residuals, level by level, and codes unused for
`dead_code_reset_every` steps are moved onto random current residuals.

Read top to bottom: estimators, the model, training (`fit`), inference (`encode`), checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.cluster import KMeans
from tqdm.auto import tqdm

from sidlib.config import TokenizerConfig
from sidlib.device import resolve_device

# --------------------------------------------------------------------------- gradient estimators


def straight_through(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Forward: c. Backward: the gradient w.r.t. c is copied unchanged to r."""
    return r + (c - r).detach()


def rotation_trick(e: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Forward: q. Backward: the gradient is rotated and rescaled from q back onto e.

    Implemented from Huh et al. 2024, "Restructuring Vector Quantization with the Rotation
    Trick" (arXiv:2410.06424), Sec. 4.2: q is written as a *constant* linear map of e,

        q_tilde = sg(lambda * R) e,   lambda = ||q|| / ||e||,
        R = I - 2 r r^T + 2 q_hat e_hat^T,   r = (e_hat + q_hat) / ||e_hat + q_hat||,

    R being the rotation (a product of two Householder reflections) that takes the direction
    e_hat onto q_hat. So q_tilde == q in the forward pass while dL/de = lambda * R^T dL/dq: the
    encoder sees the decoder's gradient rotated by the angle between e and its code, and scaled
    by their norm ratio, instead of copied (STE). R is never formed: with e_hat, q_hat and r held
    constant, R e = e - 2 (r.e) r + 2 (e_hat.e) q_hat is an O(D) expression of e.
    """
    e_norm = e.norm(dim=-1, keepdim=True).clamp_min(eps)
    q_norm = q.norm(dim=-1, keepdim=True).clamp_min(eps)
    e_hat = (e / e_norm).detach()
    q_hat = (q / q_norm).detach()
    r = F.normalize(e_hat + q_hat, dim=-1, eps=eps).detach()
    rotated = e - 2 * (e * r).sum(-1, keepdim=True) * r + 2 * (e * e_hat).sum(-1, keepdim=True) * q_hat
    return rotated * (q_norm / e_norm).detach()


# --------------------------------------------------------------------------- model


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with SiLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    def __init__(self, in_dim: int, hidden: list[int], codebook_dim: int, levels: int, codebook_size: int,
                 beta: float = 0.25, grad: str = "rotation"):
        super().__init__()
        self.arch = dict(in_dim=in_dim, hidden=list(hidden), codebook_dim=codebook_dim, levels=levels,
                         codebook_size=codebook_size, beta=beta, grad=grad)
        self.levels, self.codebook_size, self.beta, self.grad = levels, codebook_size, beta, grad
        self.encoder = mlp([in_dim, *hidden, codebook_dim])
        self.decoder = mlp([codebook_dim, *reversed(hidden), in_dim])
        # [L, K, D]; overwritten by k-means at the start of fit
        self.codebooks = nn.Parameter(torch.randn(levels, codebook_size, codebook_dim) / codebook_size)
        # Per-dimension input standardisation, set from the data by fit (identity until then).
        # Sentence embeddings are unit vectors with tiny coordinates (~1/sqrt(d)): fed raw, the
        # encoder's biases swamp the differences between items and the decoder only learns the
        # mean vector. The autoencoder works on (x - mean) / std; decode() undoes it.
        self.register_buffer("x_mean", torch.zeros(in_dim))
        self.register_buffer("x_std", torch.ones(in_dim))

    @staticmethod
    def nearest(r: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """Index of the code nearest (L2) to each row of r."""
        d = r.pow(2).sum(1, keepdim=True) - 2 * r @ codebook.T + codebook.pow(2).sum(1)[None]
        return d.argmin(1)

    def quantize(self, z: torch.Tensor):
        """z -> (z_q with the estimator's gradient, codes [B, L], vq loss, residuals [L, B, D])."""
        estimator = rotation_trick if self.grad == "rotation" else straight_through
        r = z
        z_q = torch.zeros_like(z)
        vq_loss = z.new_zeros(())
        codes, residuals = [], []
        for lvl in range(self.levels):
            cb = self.codebooks[lvl]
            idx = self.nearest(r.detach(), cb.detach())
            c = cb[idx]
            vq_loss = vq_loss + F.mse_loss(c, r.detach()) + self.beta * F.mse_loss(r, c.detach())
            z_q = z_q + estimator(r, c)
            codes.append(idx)
            residuals.append(r.detach())
            r = r - c.detach()
        return z_q, torch.stack(codes, 1), vq_loss, torch.stack(residuals)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.x_mean) / self.x_std

    def forward(self, x: torch.Tensor):
        """Training step: the recon MSE is measured on standardised vectors (1.0 = predicting the mean)."""
        xs = self.standardize(x)
        z = self.encoder(xs)
        z_q, codes, vq_loss, residuals = self.quantize(z)
        xs_hat = self.decoder(z_q)
        recon_loss = F.mse_loss(xs_hat, xs)
        return dict(xs_hat=xs_hat, codes=codes, residuals=residuals,
                    recon_loss=recon_loss, vq_loss=vq_loss, loss=recon_loss + vq_loss)

    @torch.no_grad()
    def codes_of(self, x: torch.Tensor) -> torch.Tensor:
        r = self.encoder(self.standardize(x))
        out = []
        for lvl in range(self.levels):
            idx = self.nearest(r, self.codebooks[lvl])
            out.append(idx)
            r = r - self.codebooks[lvl][idx]
        return torch.stack(out, 1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        z_q = sum(self.codebooks[lvl][codes[:, lvl]] for lvl in range(self.levels))
        return self.decoder(z_q) * self.x_std + self.x_mean


# --------------------------------------------------------------------------- training helpers


@torch.no_grad()
def kmeans_init(model: RQVAE, x: torch.Tensor, n_init: int, seed: int) -> None:
    """Codebook l = k-means centroids of the level-l residuals of x (encoder at its init)."""
    r = model.encoder(model.standardize(x))
    for lvl in range(model.levels):
        km = KMeans(n_clusters=model.codebook_size, n_init=n_init, random_state=seed + lvl)
        km.fit(r.float().cpu().numpy())
        cb = torch.as_tensor(km.cluster_centers_, dtype=r.dtype, device=r.device)
        model.codebooks.data[lvl] = cb
        r = r - cb[torch.as_tensor(km.labels_, device=r.device)]


@torch.no_grad()
def reset_dead_codes(model: RQVAE, usage: torch.Tensor, residuals: torch.Tensor, gen: torch.Generator) -> int:
    """Move codes with zero usage onto random current residuals of their level; return how many."""
    n_reset = 0
    for lvl in range(model.levels):
        dead = torch.nonzero(usage[lvl] == 0).flatten()
        if len(dead) == 0:
            continue
        pick = torch.randint(0, residuals.shape[1], (len(dead),), generator=gen).to(residuals.device)
        model.codebooks.data[lvl, dead] = residuals[lvl, pick]
        n_reset += len(dead)
    return n_reset


def lr_at(step: int, total: int, cfg: TokenizerConfig) -> float:
    """Linear warmup to cfg.lr over warmup_steps (at most 10% of the steps), then cosine decay to
    cfg.min_lr at `total`."""
    # hand-written: transformers' cosine-with-min-lr warms up from 0, lets the LR rise past `total`, rounds differently
    warm = min(cfg.warmup_steps, max(total // 10, 1))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))


def make_optimizer(model: RQVAE, cfg: TokenizerConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on the Linear weights only (not biases, not codebooks)."""
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and n != "codebooks"]
    rest = [p for n, p in model.named_parameters() if not (p.ndim == 2 and n != "codebooks")]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)


def _usage_stats(codes: torch.Tensor, K: int) -> tuple[list[float], float]:
    util = [float((torch.bincount(codes[:, lvl], minlength=K) > 0).float().mean()) for lvl in range(codes.shape[1])]
    _, counts = torch.unique(codes, dim=0, return_counts=True)
    unique_rate = float((counts == 1).sum()) / codes.shape[0]
    return util, unique_rate


# --------------------------------------------------------------------------- fit


def build(in_dim: int, cfg: TokenizerConfig) -> RQVAE:
    return RQVAE(in_dim, list(cfg.hidden), cfg.codebook_dim, cfg.levels, cfg.codebook_size, cfg.beta, cfg.grad)


def fit(emb: np.ndarray, cfg: TokenizerConfig, seed: int = 0, progress: bool = True) -> tuple[RQVAE, list[dict]]:
    """Train an RQ-VAE on emb [N, d]; return (model in eval mode, per-epoch history).

    history[i] = {epoch, recon, vq, total (mean over the epoch's steps), lr, utilization
    (per level, codes used during the epoch / K), unique_rate (of the epoch's codes), resets}.
    Same seed, same data, same settings -> identical weights and codes (CPU).
    """
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        device = torch.device(resolve_device(cfg.device))
        x_all = torch.as_tensor(np.asarray(emb, dtype=np.float32), device=device)
        n, d = x_all.shape
        model = build(d, cfg).to(device)
        if cfg.standardize:
            model.x_mean.copy_(x_all.mean(0))
            model.x_std.copy_(x_all.std(0).clamp_min(1e-6 * float(x_all.std(0).max())))

        bs = min(cfg.batch_size, n)  # full batch when the catalogue fits in one
        steps_per_epoch = math.ceil(n / bs)
        total = cfg.epochs * steps_per_epoch

        if cfg.kmeans_init:
            m = min(n, max(cfg.kmeans_init_samples, bs))
            init_idx = torch.randperm(n, generator=gen)[:m].to(device) if m < n else torch.arange(n, device=device)
            kmeans_init(model, x_all[init_idx], cfg.kmeans_n_init, seed)

        opt = make_optimizer(model, cfg)
        usage = torch.zeros(cfg.levels, cfg.codebook_size, dtype=torch.long, device=device)
        history: list[dict] = []
        step = 0
        bar = tqdm(range(cfg.epochs), desc="rqvae", disable=not progress)
        model.train()
        for epoch in bar:
            perm = torch.randperm(n, generator=gen).to(device) if bs < n else torch.arange(n, device=device)
            sums = dict(recon=0.0, vq=0.0, total=0.0)
            epoch_codes, resets = [], 0
            for s in range(steps_per_epoch):
                idx = perm[s * bs:(s + 1) * bs]
                out = model(x_all[idx])
                lr = lr_at(step, total, cfg)
                for g in opt.param_groups:
                    g["lr"] = lr
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                if cfg.clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                opt.step()
                step += 1

                codes = out["codes"]
                for lvl in range(cfg.levels):
                    usage[lvl] += torch.bincount(codes[:, lvl], minlength=cfg.codebook_size)
                if cfg.dead_code_reset_every > 0 and step % cfg.dead_code_reset_every == 0:
                    if step < total * cfg.dead_code_reset_until:
                        resets += reset_dead_codes(model, usage, out["residuals"], gen)
                    usage.zero_()
                epoch_codes.append(codes)
                sums["recon"] += out["recon_loss"].item()
                sums["vq"] += out["vq_loss"].item()
                sums["total"] += out["loss"].item()

            util, uniq = _usage_stats(torch.cat(epoch_codes), cfg.codebook_size)
            rec = {k: v / steps_per_epoch for k, v in sums.items()}
            history.append(dict(epoch=epoch, **rec, lr=lr, utilization=util, unique_rate=uniq, resets=resets))
            bar.set_postfix(recon=f"{rec['recon']:.2e}", vq=f"{rec['vq']:.2e}", uniq=f"{uniq:.3f}",
                            util=f"{min(util):.2f}")
        model.eval()
        return model, history
    finally:
        torch.use_deterministic_algorithms(prev_det)


# --------------------------------------------------------------------------- inference


def _device_of(model: RQVAE) -> torch.device:
    return model.codebooks.device


@torch.no_grad()
def encode(model: RQVAE, emb: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """int64 [N, L] codes."""
    model.eval()
    dev = _device_of(model)
    x = np.asarray(emb, dtype=np.float32)
    out = [model.codes_of(torch.as_tensor(x[i:i + batch_size], device=dev)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy().astype(np.int64)


@torch.no_grad()
def decode_codes(model: RQVAE, codes: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """float32 [N, d]: decoder(sum of the codes' vectors)."""
    model.eval()
    dev = _device_of(model)
    c = torch.as_tensor(np.asarray(codes, dtype=np.int64))
    out = [model.decode(c[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(c), batch_size)]
    return torch.cat(out).numpy()


def reconstruct(model: RQVAE, emb: np.ndarray) -> np.ndarray:
    return decode_codes(model, encode(model, emb))


# --------------------------------------------------------------------------- checkpoints


def save(model: RQVAE, cfg: TokenizerConfig, path: Path | str) -> Path:
    """One torch file: the state dict, the architecture and the TokenizerConfig as JSON strings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "method": "rqvae",
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "arch": json.dumps(model.arch),
        "config": json.dumps(dataclasses.asdict(cfg)),
    }, path)
    return path


def load(path: Path | str, device: str = "cpu") -> tuple[RQVAE, TokenizerConfig]:
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if blob.get("method") != "rqvae":
        raise ValueError(f"{path} is not an RQ-VAE checkpoint (method={blob.get('method')!r})")
    model = RQVAE(**json.loads(blob["arch"]))
    model.load_state_dict(blob["state_dict"])
    known = {f.name for f in dataclasses.fields(TokenizerConfig)}
    cfg = TokenizerConfig(**{k: v for k, v in json.loads(blob["config"]).items() if k in known})
    return model.to(torch.device(resolve_device(device))).eval(), cfg

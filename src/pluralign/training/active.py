"""Active onboarding: which comparison to ask a new user next so their K weights are learned fastest.

The posterior over a user's weights w is a fixed set of S particles on the simplex (draws from the prior),
importance-weighted by the likelihood of the user's answers so far: one row of log weights per user, so
thousands of users share one particle table and every step is a batched tensor operation.

The margin of candidate pair j (a vs b) under particle s factorizes as m_js = <phi_j, psi_s>:

- PAL-B: phi_j = the per-prototype margins of the pair (``prototype_margins``, [K]) and psi_s = w_s: the
  margin is linear in w.
- PAL-A: r = -||F - I||^2 with F = f(x; c) and I = f(w P), so m = ||F_b||^2 - ||F_a||^2 + 2 <F_a - F_b, I>:
  phi_j = [||F_b||^2 - ||F_a||^2, 2 (F_a - F_b)] and psi_s = [1, f(w_s P)]. Not linear in w, but still the
  product of a candidate table and a particle table.

Both tables are computed once; a step is a [users, candidates, r] x [r, S] product, in user chunks.

Answer model: P(a preferred over b | w) = lapse / 2 + (1 - lapse) * sigmoid(m / temperature). The lapse
rate keeps the posterior from collapsing on a wrong particle when the model itself errs on an answer.

Strategies (a score per user and candidate; the highest is asked):

- ``info-gain``: mutual information between the answer y and w, H(E_s p_s) - E_s H(p_s) (BALD).
- ``variance``: expected reduction of the posterior's total variance, tr Cov(w) - E_y tr Cov(w | y).
- ``uncertainty``: -|p(w_hat) - 1/2| at a point estimate w_hat (default: the posterior mean), the classic
  baseline that the service used.
- ``random``: uniform among the candidates still available.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from pluralign.errors import PluralignError
from pluralign.models.base import Batch, PreferenceModel, Tables, joint_pairs
from pluralign.models.pal_a import PALAModel
from pluralign.models.pal_b import PALBModel

__all__ = [
    "STRATEGIES",
    "AnswerTables",
    "OnboardingPosterior",
    "answer_tables",
    "check_model",
    "check_strategy",
    "pair_features",
    "particle_features",
    "prior_particles",
    "question_scores",
    "select_questions",
]

STRATEGIES = ("info-gain", "variance", "uncertainty", "random")
#: users x candidates x particles entries per chunk of the scoring step (float64: 8 MB). At 32 MB every
#: temporary sat at glibc's largest mmap threshold, so each one was a fresh mmap and page faults
#: (measured on the Persona onboarding benchmark: 13M minor faults and 18 s system time vs 0.9M and 1.7 s)
_CHUNK_ENTRIES = 1 << 20
#: rows per forward pass when computing candidate features
_FEATURE_ROWS = 1 << 16


def check_model(model: PreferenceModel) -> None:
    if not isinstance(model, PALAModel | PALBModel):
        raise PluralignError(
            f"active onboarding needs a PAL-A or PAL-B model, got '{getattr(model, 'kind', type(model))}' "
            "(a model with one shared reward has no user weights to learn)"
        )


def check_strategy(strategy: str) -> str:
    """``strategy`` if it is one of :data:`STRATEGIES`, else a PluralignError listing them."""
    if strategy not in STRATEGIES:
        raise PluralignError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    return strategy


# --------------------------------------------------------------------------------------------------------
def pair_features(model: PreferenceModel, batch: Batch, tables: Tables) -> torch.Tensor:
    """phi [rows, r] (float64): the margin of row j (chosen = a, rejected = b) for weights w is
    ``phi_j . particle_features(model, w)``; ``batch.user`` is ignored."""
    check_model(model)
    model.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(batch), _FEATURE_ROWS):
            part = batch.take(slice(start, start + _FEATURE_ROWS))
            if isinstance(model, PALBModel):
                parts.append(model.prototype_margins(part, tables).double())
                continue
            joint, a_pos, b_pos = joint_pairs(part, tables)
            mapped = model.f(joint).double()
            fa, fb = mapped[a_pos], mapped[b_pos]
            offset = fb.square().sum(-1, keepdim=True) - fa.square().sum(-1, keepdim=True)
            parts.append(torch.cat([offset, 2.0 * (fa - fb)], dim=-1))
    if not parts:
        uniform = torch.full((1, model.n_prototypes), 1.0 / model.n_prototypes)
        return torch.zeros(0, particle_features(model, uniform).shape[1], dtype=torch.float64)
    return torch.cat(parts)


def particle_features(model: PreferenceModel, weights: torch.Tensor) -> torch.Tensor:
    """psi [n, r] (float64) of weight vectors [n, K] on the simplex (see :func:`pair_features`)."""
    check_model(model)
    weights = weights.double()
    if isinstance(model, PALBModel):
        return weights
    model.eval()
    with torch.no_grad():
        ideal = model.f((weights @ model.prototypes.double()).to(model.prototypes.dtype)).double()
    return torch.cat([torch.ones(len(ideal), 1, dtype=torch.float64), ideal], dim=-1)


def prior_particles(
    n_particles: int,
    n_prototypes: int,
    *,
    population: torch.Tensor | np.ndarray | None = None,
    population_share: float = 0.5,
    concentration: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """Particles [S, K] drawn from the prior: a share from ``population`` (e.g. the seen users' weights,
    resampled), the rest Dirichlet(concentration), so users unlike the population keep prior support."""
    if n_particles < 1:
        raise ValueError(f"n_particles must be >= 1, got {n_particles}")
    if not 0.0 <= population_share <= 1.0:
        raise ValueError(f"population_share must be in [0, 1], got {population_share}")
    if concentration <= 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    rng = np.random.default_rng(seed)
    n_pop = 0 if population is None or len(population) == 0 else round(population_share * n_particles)
    parts = []
    if n_pop:
        population = np.asarray(population, dtype=np.float64)
        if population.ndim != 2 or population.shape[1] != n_prototypes:
            raise ValueError(f"population must be [n, {n_prototypes}], got {population.shape}")
        rows = rng.choice(len(population), n_pop, replace=n_pop > len(population))
        parts.append(population[rows])
    parts.append(rng.dirichlet(np.full(n_prototypes, concentration), size=n_particles - n_pop))
    particles = np.concatenate(parts)
    return torch.from_numpy(particles / particles.sum(1, keepdims=True))


# --------------------------------------------------------------------------------------------------------
class OnboardingPosterior:
    """Particle posterior over the weights of ``n_users`` new users at once (module docstring).

    ``particles`` [S, K] are prior draws with equal prior mass; ``log_weights`` [n_users, S] accumulate
    the log-likelihood of each user's answers.
    """

    def __init__(
        self,
        model: PreferenceModel,
        particles: torch.Tensor,
        n_users: int,
        *,
        lapse: float = 0.05,
        temperature: float = 1.0,
    ) -> None:
        check_model(model)
        if not 0.0 <= lapse < 1.0:
            raise ValueError(f"lapse must be in [0, 1), got {lapse}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if particles.ndim != 2 or particles.shape[1] != model.n_prototypes or len(particles) == 0:
            raise ValueError(
                f"particles must be [S >= 1, {model.n_prototypes}], got {tuple(particles.shape)}"
            )
        self.model = model
        self.particles = particles.double()
        self.psi = particle_features(model, self.particles)
        self.lapse = float(lapse)
        self.temperature = float(temperature)
        self.log_weights = torch.zeros(n_users, len(particles), dtype=torch.float64)

    @property
    def n_users(self) -> int:
        return self.log_weights.shape[0]

    def answer_probability(self, margins: torch.Tensor) -> torch.Tensor:
        """P(a preferred) from margins, with the lapse rate."""
        return 0.5 * self.lapse + (1.0 - self.lapse) * torch.sigmoid(margins / self.temperature)

    def _log_likelihood(self, margins: torch.Tensor, a_preferred: torch.Tensor) -> torch.Tensor:
        signed = torch.where(a_preferred[..., None], margins, -margins) / self.temperature
        if self.lapse == 0.0:
            return F.logsigmoid(signed)
        # log(lapse/2 + (1 - lapse) sigmoid(x)), stable for large |x|
        return torch.logaddexp(
            torch.full_like(signed, math.log(0.5 * self.lapse)),
            math.log1p(-self.lapse) + F.logsigmoid(signed),
        )

    def observe(self, users: torch.Tensor, phi: torch.Tensor, a_preferred: torch.Tensor) -> None:
        """Add answers: user ``users[i]`` preferred a (True) or b (False) in the pair with features
        ``phi[i]`` (several answers of one user are fine)."""
        users = torch.as_tensor(users, dtype=torch.long)
        a_preferred = torch.as_tensor(a_preferred, dtype=torch.bool)
        if not len(users) == len(phi) == len(a_preferred):
            raise ValueError(
                f"users ({len(users)}), phi ({len(phi)}) and answers ({len(a_preferred)}) differ"
            )
        if len(users) == 0:
            return
        if users.min() < 0 or users.max() >= self.n_users:
            raise ValueError(f"user index out of range [0, {self.n_users})")
        loglik = self._log_likelihood(phi.double() @ self.psi.T, a_preferred)
        self.log_weights.index_add_(0, users, loglik)

    def probabilities(self) -> torch.Tensor:
        """Normalized posterior mass of each particle, [n_users, S]."""
        return torch.softmax(self.log_weights, dim=-1)

    def mean(self) -> torch.Tensor:
        """Posterior mean weights, [n_users, K] (on the simplex)."""
        return self.probabilities() @ self.particles

    def predictive(self, users: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """Posterior predictive P(a preferred) of user ``users[i]`` for the pair ``phi[i]``."""
        users = torch.as_tensor(users, dtype=torch.long)
        mass = self.probabilities()
        out = torch.empty(len(users), dtype=torch.float64)
        rows = max(1, _CHUNK_ENTRIES // len(self.particles))
        for start in range(0, len(users), rows):  # chunks bound the memory of [rows, S]
            part = slice(start, start + rows)
            probs = self.answer_probability(phi[part].double() @ self.psi.T)
            out[part] = (probs * mass[users[part]]).sum(-1)
        return out


# --------------------------------------------------------------------------------------------------------
class AnswerTables(NamedTuple):
    """Candidate pairs with their answer probabilities and answer entropies under every particle of one
    posterior, [N, S] each: computed once (:func:`answer_tables`) when a large pool is scored many times."""

    phi: torch.Tensor
    probs: torch.Tensor
    entropy: torch.Tensor


def answer_tables(
    posterior: OnboardingPosterior, phi: torch.Tensor, *, dtype: torch.dtype = torch.float32
) -> AnswerTables:
    """The :class:`AnswerTables` of candidates ``phi`` [N, r] under ``posterior``'s particles."""
    phi = phi.double()
    probs = torch.empty(len(phi), len(posterior.particles), dtype=dtype)
    entropy = torch.empty_like(probs)
    rows = max(1, _CHUNK_ENTRIES // len(posterior.particles))
    for start in range(0, len(phi), rows):  # chunks bound the float64 work space
        part = slice(start, start + rows)
        probs[part], entropy[part] = _answer_tables(posterior, phi[part], dtype)
    return AnswerTables(phi, probs, entropy)


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1.0 - p, 1.0 - p))


def question_scores(
    posterior: OnboardingPosterior,
    phi: torch.Tensor | AnswerTables,
    candidates: torch.Tensor | None = None,
    *,
    strategy: str = "info-gain",
    asked: torch.Tensor | None = None,
    point: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Score [n_users, J] of asking each user each of their candidates (-inf where unavailable).

    ``phi`` [N, r] are the features of all candidate pairs (or their precomputed :class:`AnswerTables`,
    which makes a step several times faster); ``candidates`` [n_users, J] index user u's
    candidates into ``phi`` (-1 pads ragged pools; None: every user's pool is all N rows, J = N);
    ``asked`` [n_users, J] marks candidates already asked. ``point`` [n_users, K] is the estimate
    ``uncertainty`` scores at (default: the posterior mean). ``dtype`` is that of the [users, candidates,
    particles] work arrays (float32 halves their cost; the scores are returned as float64).
    """
    check_strategy(strategy)
    n_users = posterior.n_users
    tables = phi if isinstance(phi, AnswerTables) else None
    phi = (tables.phi if tables is not None else phi).double()
    if tables is not None and tables.probs.shape != (len(phi), len(posterior.particles)):
        raise ValueError(f"answer tables {list(tables.probs.shape)} do not match this posterior's particles")
    shape = (n_users, len(phi)) if candidates is None else tuple(candidates.shape)
    if candidates is not None:
        if candidates.ndim != 2 or candidates.shape[0] != n_users:
            raise ValueError(f"candidates must be [{n_users}, J], got {tuple(candidates.shape)}")
        if candidates.numel() and candidates.max() >= len(phi):
            raise ValueError(f"candidate index out of range [0, {len(phi)})")
    available = torch.ones(shape, dtype=torch.bool) if candidates is None else candidates >= 0
    if asked is not None:
        if tuple(asked.shape) != shape:
            raise ValueError(f"asked must be {list(shape)}, got {list(asked.shape)}")
        available &= ~asked
    if strategy == "random":
        scores = torch.rand(shape, generator=generator, dtype=torch.float64)
    elif strategy == "uncertainty":
        point = posterior.mean() if point is None else point.double()
        psi = particle_features(posterior.model, point)  # [n_users, r]
        if candidates is None:
            margins = psi @ phi.T
        else:
            margins = torch.einsum("ujr,ur->uj", phi[candidates.clamp(min=0)], psi)
        scores = -(posterior.answer_probability(margins) - 0.5).abs()
    elif candidates is None:
        scores = _shared_pool_scores(posterior, phi, tables, strategy, dtype)
    else:
        scores = _own_pool_scores(posterior, phi, tables, candidates, strategy, dtype)
    return scores.masked_fill(~available, -math.inf)


def _answer_tables(
    posterior: OnboardingPosterior, phi: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """P(a preferred) and the entropy of the answer, per candidate (leading dims of phi) and particle."""
    probs = posterior.answer_probability(phi @ posterior.psi.T).to(dtype)
    return probs, _binary_entropy(probs)


def _shared_pool_scores(
    posterior: OnboardingPosterior,
    phi: torch.Tensor,
    tables: AnswerTables | None,
    strategy: str,
    dtype: torch.dtype,
) -> torch.Tensor:
    # One pool for everyone: the candidate x particle tables are computed once per chunk of candidates and
    # every user's score is a matrix product with their posterior mass.
    mass = posterior.probabilities()
    mass_w = mass[:, :, None] * posterior.particles[None]  # [U, S, K]
    mass_t, mass_w_t = mass.to(dtype), mass_w.to(dtype)
    scores = torch.empty(posterior.n_users, len(phi), dtype=torch.float64)
    rows = max(1, _CHUNK_ENTRIES // (len(posterior.particles) * max(1, posterior.n_users)))
    for start in range(0, len(phi), rows):  # chunks of candidates bound the memory
        part = slice(start, start + rows)
        if tables is None:
            probs, entropy = _answer_tables(posterior, phi[part], dtype)
        else:
            probs, entropy = tables.probs[part].to(dtype), tables.entropy[part].to(dtype)
        p_a = (mass_t @ probs.T).double()
        if strategy == "info-gain":
            scores[:, part] = _binary_entropy(p_a) - (mass_t @ entropy.T).double()
        else:
            first_a = torch.einsum("usk,ns->unk", mass_w_t, probs).double()
            scores[:, part] = _variance_reduction(p_a, first_a, mass_w.sum(1))
    return scores


def _own_pool_scores(
    posterior: OnboardingPosterior,
    phi: torch.Tensor,
    tables: AnswerTables | None,
    candidates: torch.Tensor,
    strategy: str,
    dtype: torch.dtype,
) -> torch.Tensor:
    n_users, width = candidates.shape
    scores = torch.empty(n_users, width, dtype=torch.float64)
    rows = max(1, _CHUNK_ENTRIES // max(1, width * len(posterior.particles)))
    for start in range(0, n_users, rows):  # chunks of users bound the memory of [u, J, S]
        part = slice(start, start + rows)
        rows_of = candidates[part].clamp(min=0)
        if tables is None:
            probs, entropy = _answer_tables(posterior, phi[rows_of], dtype)
        else:
            probs, entropy = tables.probs[rows_of].to(dtype), tables.entropy[rows_of].to(dtype)
        mass = torch.softmax(posterior.log_weights[part], dim=-1)
        p_a = (probs @ mass.to(dtype)[:, :, None])[..., 0].double()
        if strategy == "info-gain":
            expected = (entropy @ mass.to(dtype)[:, :, None])[..., 0].double()
            scores[part] = _binary_entropy(p_a) - expected
        else:
            mass_w = mass[:, :, None] * posterior.particles[None]
            first_a = (probs @ mass_w.to(dtype)).double()
            scores[part] = _variance_reduction(p_a, first_a, mass_w.sum(1))
    return scores


def _variance_reduction(p_a: torch.Tensor, first_a: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """tr Cov(w) - E_y tr Cov(w | y) = sum_y |E[w 1{y}]|^2 / p(y) - |E w|^2, from p_a [u, J],
    E[w 1{y = a}] [u, J, K] and E w [u, K]."""
    first_b = mean[:, None, :] - first_a
    tiny = torch.finfo(torch.float64).tiny
    return (
        first_a.square().sum(-1) / p_a.clamp(min=tiny)
        + first_b.square().sum(-1) / (1.0 - p_a).clamp(min=tiny)
        - mean.square().sum(-1, keepdim=True)
    )


def select_questions(
    posterior: OnboardingPosterior,
    phi: torch.Tensor | AnswerTables,
    candidates: torch.Tensor | None = None,
    *,
    strategy: str = "info-gain",
    asked: torch.Tensor | None = None,
    point: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Position (in each user's row of ``candidates``) of the next question per user, [n_users] long.

    Arguments as :func:`question_scores`. Raises PluralignError if the pool is empty or a user has no
    candidate left.
    """
    check_strategy(strategy)
    width = len(phi) if candidates is None else candidates.shape[-1]
    if width == 0:
        raise PluralignError("the candidate pool is empty")
    scores = question_scores(
        posterior,
        phi,
        candidates,
        strategy=strategy,
        asked=asked,
        point=point,
        generator=generator,
        dtype=dtype,
    )
    exhausted = torch.isneginf(scores).all(dim=-1)
    if exhausted.any():
        users = exhausted.nonzero().flatten().tolist()
        raise PluralignError(
            f"no candidate left for {len(users)} user(s) (e.g. user {users[0]}): every candidate in their "
            "pool was already asked"
        )
    return scores.argmax(dim=-1)

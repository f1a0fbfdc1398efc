"""EM-DPO: latent preference types, one policy per type, trained by expectation-maximization.

Model: each user belongs to one of T latent types (prior eta); a type t ranks responses by its implicit
reward r_t(x, y) = beta (log pi_t(y|x) - log pi_ref(y|x)), with Plackett-Luce choice probabilities for a
ranking y_1 > ... > y_m (Bradley-Terry when m = 2):

    log P_t(ranking) = sum_{i<m} [ r_t(y_i) - logsumexp_{j>=i} r_t(y_j) ].

E-step: the posterior of user u over types from the likelihood of *all* the user's rankings,
gamma[u, t] ∝ eta_t prod_rankings P_t(ranking). M-step: for each type, DPO on the full-breaking pairs of
every ranking with each pair weighted by its user's gamma[u, t] (:class:`PluralDPOTrainer`), then
eta = mean_u gamma[u]. Pairwise data can leave types unidentifiable (a user's single pair fits many
types equally); rankings of three or more responses carry more information per user.

Policies are full copies of the model, or, given a PEFT config, one LoRA adapter per type on one shared
base (the reference is the base with adapters disabled). Reference log-probs are computed once, on the
tokens TRL builds (chat template or raw text: :mod:`pluralign.dpo.formatting`), and handed to every M-step
in the dataset; TRL is given the reference module only to satisfy its constructor and never runs it.
:meth:`EMDPOTrainer.save_model` writes one loadable directory per type (:mod:`pluralign.dpo.artifacts`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from trl import DPOConfig

from pluralign.dpo.data import pairs_dataset, tokenize_rankings
from pluralign.dpo.formatting import use_chat_template
from pluralign.dpo.logps import unique_completion_logps
from pluralign.dpo.mmra import MinMaxRegret, min_max_regret, mmra_values
from pluralign.dpo.trainers import WEIGHT_COLUMN, PluralDPOTrainer

__all__ = ["EMDPOTrainer", "MixturePolicy", "plackett_luce_log_likelihood", "type_posteriors"]

log = logging.getLogger(__name__)


def plackett_luce_log_likelihood(rewards: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """log P(ranking) under Plackett-Luce for rankings stored best first in a padded [..., R, M] tensor.

    ``rewards[..., r, i]`` is the reward of ranking r's i-th best response (entries at i >= lengths[r] are
    ignored); returns [..., R]. For m = 2 this is Bradley-Terry's log sigmoid(r_1 - r_2).
    """
    width = rewards.shape[-1]
    valid = torch.arange(width, device=rewards.device) < lengths.unsqueeze(-1)
    masked = rewards.masked_fill(~valid, -math.inf)
    # logsumexp over the not-yet-chosen responses j >= i: a reversed cumulative logsumexp
    tail = torch.logcumsumexp(masked.flip(-1), dim=-1).flip(-1)
    terms = (masked - tail).masked_fill(~valid, 0.0)
    # the last response is chosen with probability 1 (its term is 0)
    return terms.sum(-1)


def type_posteriors(
    log_likelihood: np.ndarray, users: np.ndarray, n_users: int, log_prior: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(posterior [U, T], per-user log-likelihood [U, T]) from per-ranking log-likelihoods [R, T]."""
    per_user = np.zeros((n_users, log_likelihood.shape[1]))
    np.add.at(per_user, users, log_likelihood)
    joint = per_user + log_prior
    joint -= joint.max(axis=1, keepdims=True)
    posterior = np.exp(joint)
    posterior /= posterior.sum(axis=1, keepdims=True)
    return posterior, per_user


@dataclass
class MixturePolicy:
    """Serve a user of unknown type: draw a type policy from the MMRA mixture, then generate with it."""

    trainer: EMDPOTrainer
    weights: np.ndarray

    def sample_policy(self, rng: np.random.Generator | int | None = None) -> int:
        """The type whose policy answers this request, drawn from the mixture weights."""
        return int(np.random.default_rng(rng).choice(len(self.weights), p=self.weights))

    def generate(self, *args: Any, rng: np.random.Generator | int | None = None, **kwargs: Any) -> Any:
        """``model.generate(*args, **kwargs)`` with the sampled type's policy."""
        with torch.no_grad():
            return self.trainer.policy(self.sample_policy(rng)).generate(*args, **kwargs)


class EMDPOTrainer:
    """EM over latent preference types with one DPO policy per type (TRL ``DPOConfig`` for the M-steps).

    ``train_dataset`` holds ``user_id``, ``prompt`` and either ``responses`` (best first) or ``chosen`` /
    ``rejected`` (an HF ``Dataset`` or a pandas frame; :func:`pluralign.dpo.data.read_rankings` reads
    files). ``args`` configures each M-step's ``PluralDPOTrainer`` (``args.beta`` is also the E-step's beta);
    ``args.output_dir`` receives ``type_<t>/`` per policy on :meth:`save_model`.

    ``init`` chooses the starting posteriors: "disagreement" (default) trains one DPO policy on all data,
    then splits users into T equal groups by how well it explains them (the worst-explained users seed the
    minority types); "random" draws them from a flat Dirichlet. Fitted attributes: ``posteriors_`` (users x
    types frame), ``eta_``, ``history_`` (per iteration: mean log-likelihood, eta, assignment changes),
    ``optimizer_steps_`` (summed over all M-steps), and after :meth:`mmra` ``mmra_`` (weights, values,
    regret; saved in ``em_dpo.json``).

    ``chat_template`` ("auto", "on", "off"): how prompts and responses are formatted
    (:mod:`pluralign.dpo.formatting`); ``chat_template_`` holds the resolved choice.
    """

    def __init__(
        self,
        model: Any,
        *,
        args: DPOConfig,
        train_dataset: Dataset | pd.DataFrame,
        processing_class: Any,
        n_types: int = 2,
        n_iterations: int = 3,
        init: str = "disagreement",
        peft_config: Any = None,
        score_batch_size: int = 32,
        seed: int = 0,
        chat_template: str | bool = "auto",
    ) -> None:
        if isinstance(n_types, bool) or not isinstance(n_types, int) or n_types < 1:
            raise ValueError(f"n_types must be a positive integer, got {n_types!r}")
        if isinstance(n_iterations, bool) or not isinstance(n_iterations, int) or n_iterations < 1:
            raise ValueError(f"n_iterations must be a positive integer, got {n_iterations!r}")
        if init not in ("disagreement", "random"):
            raise ValueError(f"init must be 'disagreement' or 'random', got {init!r}")
        self.args = args
        self.tokenizer = processing_class
        self.n_types = n_types
        self.n_iterations = n_iterations
        self.init = init
        self.score_batch_size = score_batch_size
        self.seed = seed
        self.chat_template_ = use_chat_template(processing_class, chat_template)
        self.rankings = _as_rankings(train_dataset)
        self.users_, self._user_index = np.unique(self.rankings["user_id"].to_numpy(), return_inverse=True)
        self._build_policies(model, peft_config)
        self._tokenize()
        self.ref_logps_ = self._score(None)
        self.posteriors_: pd.DataFrame | None = None
        self.eta_: np.ndarray | None = None
        self.history_: list[dict[str, Any]] = []
        self.mmra_: dict[str, Any] | None = None
        self.optimizer_steps_ = 0  # over every M-step (the pooled initial fit included)

    # --- policies -------------------------------------------------------------------------------------
    def _build_policies(self, model: Any, peft_config: Any) -> None:
        self._peft_config = peft_config
        if peft_config is not None:
            from peft import get_peft_model

            self._shared = get_peft_model(model, peft_config, adapter_name="type_0")
            for t in range(1, self.n_types):
                self._shared.add_adapter(f"type_{t}", peft_config)
            self._policies: list[Any] = []
            self._reference = None
        else:
            # policies train what the given model trains (e.g. only its last blocks); the reference is frozen
            self._trainable = {name for name, p in model.named_parameters() if p.requires_grad}
            self._reference = model
            self._policies = [self._fresh_copy() for _ in range(self.n_types)]
            for p in model.parameters():
                p.requires_grad_(False)

    @property
    def peft(self) -> bool:
        """True when the type policies are LoRA (PEFT) adapters on one shared base."""
        return self._peft_config is not None

    @property
    def _peft(self) -> bool:
        return self.peft

    def _fresh_copy(self) -> Any:
        policy = copy.deepcopy(self._reference)
        for name, p in policy.named_parameters():
            p.requires_grad_(name in self._trainable)
        return policy

    def policy(self, t: int) -> Any:
        """The model that acts as type ``t``'s policy (for PEFT: the shared model with adapter t active)."""
        if not 0 <= t < self.n_types:
            raise ValueError(f"type {t} out of range 0..{self.n_types - 1}")
        if self._peft:
            self._shared.set_adapter(f"type_{t}")
            return self._shared
        return self._policies[t]

    # --- data -----------------------------------------------------------------------------------------
    def _tokenize(self) -> None:
        self._tokens = _RankingTokens.build(self.tokenizer, self.rankings, self.chat_template_)
        self._lengths = self._tokens.lengths
        self._owner = self._tokens.owner
        self._pairs: Dataset | None = None

    def _score(self, t: int | None, tokens: _RankingTokens | None = None) -> torch.Tensor:
        """log pi(y|x) of every ranked response under type t's policy (None: the reference)."""
        tokens = tokens or self._tokens
        if t is None:
            if self._peft:
                with self._shared.disable_adapter():
                    return self._score_model(self._shared, "reference", tokens)
            return self._score_model(self._reference, "reference", tokens)
        return self._score_model(self.policy(t), f"type {t}", tokens)

    def _score_model(self, model: Any, name: str, tokens: _RankingTokens | None = None) -> torch.Tensor:
        tokens = tokens or self._tokens
        return unique_completion_logps(
            model,
            tokens.prompt_ids,
            tokens.response_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            batch_size=self.score_batch_size,
            progress=True,
            desc=f"scoring responses ({name})",
        )

    def _pair_dataset(self, weights: np.ndarray | None) -> Dataset:
        if self._pairs is None:
            reference = self._shared if self._peft else self._reference
            context = self._shared.disable_adapter() if self._peft else contextlib.nullcontext()
            with context:
                self._pairs = pairs_dataset(
                    self.rankings,
                    self.tokenizer,
                    reference,
                    chat=self.chat_template_,
                    batch_size=self.score_batch_size,
                )
        if weights is None:
            return self._pairs
        per_pair = weights[self._user_index[np.asarray(self._pairs["ranking"])]]
        return self._pairs.add_column(WEIGHT_COLUMN, per_pair.tolist())

    # --- EM ---------------------------------------------------------------------------------------------
    def rewards(self, t: int) -> torch.Tensor:
        """Implicit rewards beta (log pi_t - log pi_ref) of every ranked response under type t."""
        return self.args.beta * (self._score(t) - self.ref_logps_)

    def _padded(self, flat: torch.Tensor) -> torch.Tensor:
        return self._tokens.padded(flat)

    def ranking_log_likelihood(self) -> np.ndarray:
        """Plackett-Luce log-likelihood [rankings, types] of every training ranking under every type."""
        rewards = torch.stack([self._padded(self.rewards(t)) for t in range(self.n_types)])
        ll = plackett_luce_log_likelihood(rewards.double(), torch.as_tensor(self._lengths))
        return ll.T.numpy()

    def _m_step(self, model: Any, weights: np.ndarray | None, name: str) -> None:
        # M-steps write nothing worth keeping: a scratch output_dir, removed afterwards (no empty folders)
        scratch = tempfile.mkdtemp(prefix=f"em-dpo-{name.replace('/', '-')}-")
        try:
            args = replace(
                self.args,
                output_dir=scratch,
                precompute_ref_log_probs=False,
                save_strategy="no",
                report_to=[],
            )
            trainer = PluralDPOTrainer(
                model=model,
                # The dataset carries the reference log-probs, so no reference model is ever run. TRL still
                # wants one (else it would load a copy, or for PEFT clone an adapter named "default"; ours are
                # named per type): give it the module that is there anyway.
                ref_model=self._shared.get_base_model() if self._peft else self._reference,
                args=args,
                train_dataset=self._pair_dataset(weights),
                processing_class=self.tokenizer,
            )
            trainer.train()
            self.optimizer_steps_ += trainer.state.global_step
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _initial_posteriors(self) -> np.ndarray:
        n_users, n_types = len(self.users_), self.n_types
        rng = np.random.default_rng(self.seed)
        if n_types == 1:
            return np.ones((n_users, 1))
        if self.init == "random":
            return rng.dirichlet(np.ones(n_types), size=n_users)
        # one pooled DPO policy on all data (a temporary copy or adapter), then users ranked by its fit
        if self._peft:
            self._shared.add_adapter("pooled", self._peft_config)
            self._shared.set_adapter("pooled")
            pooled_model = self._shared
        else:
            pooled_model = self._fresh_copy()
        self._m_step(pooled_model, None, "pooled")
        rewards = self.args.beta * (self._score_model(pooled_model, "pooled") - self.ref_logps_)
        if self._peft:
            self._shared.set_adapter("type_0")
            self._shared.delete_adapter("pooled")
        del pooled_model
        pooled = plackett_luce_log_likelihood(self._padded(rewards).double(), torch.as_tensor(self._lengths))
        per_user = np.bincount(self._user_index, weights=pooled.numpy(), minlength=n_users)
        per_user /= np.bincount(self._user_index, minlength=n_users)
        order = np.lexsort((rng.random(n_users), -per_user))  # best explained first, ties at random
        groups = np.empty(n_users, dtype=np.int64)
        groups[order] = np.arange(n_users) * n_types // n_users
        posterior = np.full((n_users, n_types), 0.1 / (n_types - 1))
        posterior[np.arange(n_users), groups] = 0.9
        return posterior

    def train(self) -> EMDPOTrainer:
        """Run EM: initial posteriors, then ``n_iterations`` of (M-step per type, E-step)."""
        gamma = self._initial_posteriors()
        eta = gamma.mean(axis=0)
        for iteration in range(1, self.n_iterations + 1):
            for t in range(self.n_types):
                self._m_step(self.policy(t), gamma[:, t], f"iter_{iteration}/type_{t}")
            ll = self.ranking_log_likelihood()
            new_gamma, per_user = type_posteriors(ll, self._user_index, len(self.users_), np.log(eta))
            changed = int((new_gamma.argmax(1) != gamma.argmax(1)).sum())
            gamma, eta = new_gamma, new_gamma.mean(axis=0)
            record = {
                "iteration": iteration,
                "mean_log_likelihood": float((per_user * gamma).sum() / len(self.rankings)),
                "eta": eta.round(4).tolist(),
                "assignments_changed": changed,
            }
            self.history_.append(record)
            log.info("EM-DPO iteration %d: %s", iteration, record)
        columns = [f"type_{t}" for t in range(self.n_types)]
        self.posteriors_ = pd.DataFrame(gamma, index=pd.Index(self.users_, name="user_id"), columns=columns)
        self.eta_ = eta
        return self

    # --- serving ------------------------------------------------------------------------------------------
    def assignments(self) -> pd.Series:
        """Most probable type of each training user."""
        if self.posteriors_ is None:
            raise RuntimeError("call train() first")
        return self.posteriors_.idxmax(axis=1).str.removeprefix("type_").astype(int)

    def mmra(
        self,
        values: np.ndarray | None = None,
        *,
        rankings: pd.DataFrame | None = None,
        normalize: bool = True,
        tol: float = 1e-6,
    ) -> tuple[MinMaxRegret, MixturePolicy]:
        """Min-max-regret mixture over the type policies, and a policy that serves from it.

        ``values[t, s]`` is the value of policy s for type t; by default :meth:`value_matrix` on ``rankings``
        (held-out rankings: ``user_id``, ``prompt``, ``responses``; default the training rankings).
        ``normalize`` (default) rescales each type's values to [0, 1] over the policies first: implicit
        rewards are Bradley-Terry utilities, fixed per type only up to a positive scale and a shift, so raw
        regrets would compare types on arbitrary scales and let the type with the widest rewards decide
        the mixture; ``normalize=False`` keeps the raw values. A type whose values span less than ``tol``
        (relative to their magnitude) is treated as indifferent. The result is kept in ``mmra_`` and saved.
        """
        source = "given"
        if values is None:
            values = self.value_matrix(rankings)
            source = "training rankings" if rankings is None else "held-out rankings"
        result = min_max_regret(values, normalize=normalize, tol=tol)
        self.mmra_ = {
            "weights": result.weights.tolist(),
            "values": np.asarray(values, dtype=np.float64).tolist(),
            "regret": result.regret.tolist(),
            "max_regret": result.max_regret,
            "normalize": normalize,
            "values_from": source,
        }
        return result, MixturePolicy(self, result.weights)

    def value_matrix(self, rankings: pd.DataFrame | None = None) -> np.ndarray:
        """U[t, s]: type t's expected implicit reward when policy s picks among each ranking's responses.

        Policy s picks response y of a ranking with probability proportional to pi_s(y|x) / pi_ref(y|x)
        (its tilt of the reference: what it would pick among candidates drawn from the reference). That
        ratio, not pi_s itself, compares policies on what the types prefer: a whole-sequence softmax of
        log pi_s puts all its mass on the shortest response for every policy alike. Type t's rewards are
        r_t = beta (log pi_t - log pi_ref), centred within each ranking; the mean is over ``rankings``
        (default: the training rankings; pass held-out ones to judge the policies on unseen prompts).
        """
        tokens = self._tokens
        if rankings is not None:
            frame = _as_rankings(rankings)
            tokens = _RankingTokens.build(self.tokenizer, frame, self.chat_template_)
        reference = self._score(None, tokens) if rankings is not None else self.ref_logps_
        logps = torch.stack([self._score(t, tokens) for t in range(self.n_types)])  # [T, N]
        ratio = torch.stack([tokens.padded(row - reference).double() for row in logps])  # [T, R, M]
        return mmra_values(ratio, self.args.beta * ratio, torch.as_tensor(tokens.lengths))

    def save_model(
        self,
        output_dir: str | Path | None = None,
        *,
        base_model_path: str | None = None,
        card: dict[str, Any] | None = None,
    ) -> Path:
        """One loadable directory per type (``type_<t>/``: model or adapter, tokenizer, model card) and
        ``em_dpo.json`` (types, eta, posteriors, history, MMRA); :func:`pluralign.dpo.artifacts.load_em_dpo`
        restores them. LoRA adapters record ``base_model_path`` (default: the base model's own folder) so
        ``AutoPeftModelForCausalLM`` loads them from their directory alone; ``card``: extra hyperparameters
        (and ``datasets``) for the model cards."""
        from pluralign.dpo.artifacts import save_em_dpo

        target = Path(output_dir or self.args.output_dir)
        return save_em_dpo(self, target, base_model_path=base_model_path, card=card)


@dataclass
class _RankingTokens:
    """Rankings flattened to one row per response: token ids, lengths, owner ranking, offsets."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    lengths: np.ndarray
    owner: np.ndarray
    offsets: np.ndarray

    @classmethod
    def build(cls, tokenizer: Any, rankings: pd.DataFrame, chat: bool) -> _RankingTokens:
        prompt_ids, response_ids = tokenize_rankings(tokenizer, rankings, chat=chat)
        lengths = np.array([len(r) for r in response_ids], dtype=np.int64)
        owner = np.repeat(np.arange(len(rankings)), lengths)  # ranking of each response
        return cls(
            prompt_ids=[prompt_ids[o] for o in owner],
            response_ids=[ids for ranking in response_ids for ids in ranking],
            lengths=lengths,
            owner=owner,
            offsets=np.concatenate([[0], np.cumsum(lengths)]),
        )

    def padded(self, flat: torch.Tensor) -> torch.Tensor:
        """[rankings, max length] from one value per response (0 where a ranking is shorter)."""
        out = torch.zeros((len(self.lengths), int(self.lengths.max())), dtype=flat.dtype)
        position = np.arange(len(flat)) - self.offsets[self.owner]
        out[torch.as_tensor(self.owner), torch.as_tensor(position)] = flat
        return out


def _as_rankings(data: Dataset | pd.DataFrame) -> pd.DataFrame:
    from pluralign.dpo.data import rankings_from_records

    frame = data.to_pandas() if isinstance(data, Dataset) else data
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"train_dataset must be a datasets.Dataset or a pandas DataFrame, got {type(data)}")
    return rankings_from_records(frame.to_dict("records"), source="train_dataset")

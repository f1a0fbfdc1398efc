"""pluralign.rl.PersonalReward (TRL reward functions) in process and over HTTP, and POST /get_reward."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import HashEncoder
from pluralign.data.readers import read_preferences
from pluralign.encoders.precomputed import save_vectors
from pluralign.errors import PluralignError
from pluralign.estimator import PALEstimator
from pluralign.rl import PersonalReward, normalize_per_prompt, render_completions
from pluralign.serve import create_app
from pluralign.serve.testing import make_demo_model, serving

TOKEN = "s3cret-token"
USERS = ["user-0", "user-1", "stranger", "user-2", "user-0", "user-3"]
PROMPTS = ["ctx-0", "ctx-1", "ctx-2", "ctx-0", "ctx-0", "ctx-3"]
ITEMS = ["item-0", "item-1", "item-2", "item-3", "item-4", "item-5"]
DOC = Path(__file__).resolve().parents[1] / "docs" / "rl.md"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_demo_model(tmp_path_factory.mktemp("rl_model"))


@pytest.fixture(scope="module")
def est(model_dir) -> PALEstimator:
    return PALEstimator.load(model_dir)


@pytest.fixture(scope="module")
def service_url(model_dir, tmp_path_factory):
    """A write-mode service (token set) on loopback: /get_reward must still need no token."""
    state = tmp_path_factory.mktemp("rl_state") / "state.db"
    with serving(create_app(model_dir, state, token=TOKEN)) as url:
        yield url


@pytest.fixture
def http(service_url):
    with httpx.Client(base_url=service_url, timeout=30) as client:
        yield client


def trl_kwargs(users=USERS):
    """What TRL's GRPOTrainer passes besides prompts/completions: the other columns and its helpers."""
    return {
        "completion_ids": [[1, 2]] * len(users),
        "user_id": list(users),
        "topic": ["x"] * len(users),
        "trainer_state": object(),
        "log_extra": lambda *a, **k: None,
        "log_metric": lambda *a, **k: None,
    }


def independent_rewards(est, weights, prompts, items):
    """model.rewards on the encoder's vectors: the reference the estimator's paths must equal."""
    encoder = est.get_encoder()
    x = torch.from_numpy(encoder.encode(items))
    c = torch.from_numpy(encoder.encode(prompts))
    w = torch.tensor(np.array(weights, dtype=np.float32))
    with torch.no_grad():
        return est.model_.rewards(w.expand(len(items), -1), x, c).double().numpy()


# --- in process ------------------------------------------------------------------------------------------
def test_user_mode_equals_estimator_reward_with_trl_kwargs(est):
    reward = PersonalReward.from_estimator(est)
    out = reward(prompts=PROMPTS, completions=ITEMS, **trl_kwargs())
    assert isinstance(out, list) and all(isinstance(r, float) for r in out)
    np.testing.assert_array_equal(out, est.reward(USERS, PROMPTS, ITEMS))
    assert reward.__name__ == "pluralign_user_reward"
    # the stranger gets the zero-shot weights, a checkpoint user their own
    zero_shot = independent_rewards(est, est.zero_shot_weights_.numpy(), PROMPTS[2:3], ITEMS[2:3])
    np.testing.assert_allclose(out[2], zero_shot[0], rtol=1e-5)
    own = est.user_weights(["user-1"]).to_numpy()[0]
    np.testing.assert_allclose(out[1], independent_rewards(est, own, PROMPTS[1:2], ITEMS[1:2])[0], rtol=1e-5)


def test_run_directory_and_default_user(model_dir, est):
    reward = PersonalReward.from_estimator(model_dir.parent, default_user="user-2")  # the run directory
    out = reward(prompts=PROMPTS, completions=ITEMS)  # no user_id column: the default user
    np.testing.assert_allclose(out, est.reward("user-2", PROMPTS, ITEMS), rtol=1e-6)
    with pytest.raises(PluralignError, match="'user_id' column"):
        PersonalReward.from_estimator(est)(prompts=PROMPTS, completions=ITEMS)
    other = PersonalReward.from_estimator(est, user_column="who")
    np.testing.assert_array_equal(
        other(prompts=PROMPTS, completions=ITEMS, who=USERS), est.reward(USERS, PROMPTS, ITEMS)
    )
    with pytest.raises(PluralignError, match="no user id at row"):
        other(prompts=PROMPTS[:2], completions=ITEMS[:2], who=["user-0", None])


def test_prototype_and_fixed_weight_modes(est):
    k = est.model_.n_prototypes
    per_prototype = []
    for proto in range(k):
        reward = PersonalReward.from_estimator(est, mode=proto)
        out = np.asarray(reward(prompts=PROMPTS, completions=ITEMS, **trl_kwargs()))  # user_id ignored
        np.testing.assert_allclose(out, independent_rewards(est, np.eye(k)[proto], PROMPTS, ITEMS), rtol=1e-5)
        assert reward.__name__ == f"pluralign_prototype_{proto}_reward"
        per_prototype.append(out)
    weights = [0.3, 0.7]
    fixed = PersonalReward.from_estimator(est, mode=weights)
    out = np.asarray(fixed(prompts=PROMPTS, completions=ITEMS))
    np.testing.assert_allclose(out, independent_rewards(est, weights, PROMPTS, ITEMS), rtol=1e-5)
    # PAL-B's reward is linear in the weights: a user's reward is their mixture of the prototypes' rewards
    np.testing.assert_allclose(out, np.asarray(weights) @ np.stack(per_prototype), rtol=1e-5, atol=1e-6)
    mine = est.user_weights(["user-0"]).to_numpy()[0]
    np.testing.assert_allclose(
        est.reward("user-0", PROMPTS, ITEMS), mine @ np.stack(per_prototype), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        (2, "does not exist"),
        (-1, "does not exist"),
        ([1.0], "2 finite"),
        ([0.5, np.nan], "finite"),
        ("x", "mode"),
        (True, "bool"),
    ],
)
def test_bad_modes(est, mode, match):
    with pytest.raises(PluralignError, match=match):
        PersonalReward.from_estimator(est, mode=mode)


def test_one_embedding_call_for_the_batch_of_completions(model_dir):
    est = PALEstimator.load(model_dir)
    inner = est.get_encoder()
    calls = []

    class Counting:
        id, dim, cacheable = inner.id, inner.dim, False

        def encode(self, texts, **options):
            calls.append(list(texts))
            return inner.encode(texts, **options)

    est.set_params(encoder=Counting())
    items = [f"item-{i}" for i in range(64)]
    prompts = [f"ctx-{i // 8}" for i in range(64)]  # 8 prompts x 8 generations, as GRPO sends them
    users = [f"user-{i // 8}" for i in range(64)]
    PersonalReward.from_estimator(est)(prompts=prompts, completions=items, user_id=users)
    assert [sorted(c) for c in calls if c[0].startswith("item")] == [sorted(items)]
    assert len(calls) == 2  # the completions, and the distinct prompts


# --- conversational ----------------------------------------------------------------------------------
def tagged(messages, add_generation_prompt=False):
    """A chat template as a callable: <role>content..., the generation prompt an open assistant tag."""
    return "".join(f"<{m['role']}>{m['content']}" for m in messages) + (
        "<assistant>" if add_generation_prompt else ""
    )


@pytest.mark.parametrize("template", [None, tagged])
def test_conversational_rendering_is_the_readers(template):
    prompts = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "ctx-0"}]]
    chosen = [[{"role": "assistant", "content": "item-1"}]]
    rejected = [[{"role": "assistant", "content": "item-2"}]]
    frame = pd.DataFrame({"user_id": ["u"], "prompt": prompts, "chosen": chosen, "rejected": rejected})
    data = read_preferences(frame, chat_template=template)
    p, c = render_completions(prompts, chosen, chat_template=template)
    assert p == [data.contexts[data.context[0]]]
    assert c == [data.items[data.chosen[0]]]
    if template is None:
        assert (p, c) == (["system: be brief\nuser: ctx-0"], ["assistant: item-1"])
    else:
        assert (p, c) == (["<system>be brief<user>ctx-0<assistant>"], ["item-1"])


def test_conversational_completions_score_their_rendered_text(model_dir, tmp_path):
    est = PALEstimator.load(model_dir)
    table = np.load(model_dir.parent / "vectors.npz")
    keys, vectors = list(table["keys"]), table["vectors"]
    index = {k: i for i, k in enumerate(keys)}
    # the rendered texts get the vectors of the plain ones, so both must score the same
    extra = {f"user: {p}": p for p in PROMPTS} | {f"assistant: {c}": c for c in ITEMS}
    path = save_vectors(
        tmp_path / "chat.npz",
        keys + list(extra),
        np.concatenate([vectors, vectors[[index[v] for v in extra.values()]]]),
    )
    est.set_params(encoder=str(path))
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": c}] for c in ITEMS]
    out = PersonalReward.from_estimator(est)(prompts=prompts, completions=completions, user_id=USERS)
    rendered = est.reward(USERS, [f"user: {p}" for p in PROMPTS], [f"assistant: {c}" for c in ITEMS])
    np.testing.assert_array_equal(out, rendered)
    np.testing.assert_allclose(out, est.reward(USERS, PROMPTS, ITEMS), rtol=1e-6)


# --- normalisation -----------------------------------------------------------------------------------------
def test_per_prompt_normalisation(est):
    items = [f"item-{i}" for i in range(12)]
    prompts = ["ctx-0"] * 4 + ["ctx-1"] * 4 + ["ctx-2"] * 4
    users = ["user-0"] * 8 + ["user-4"] * 4
    reward = PersonalReward.from_estimator(est, normalize=True)
    out = np.asarray(reward(prompts=prompts, completions=items, user_id=users))
    raw = est.reward(users, prompts, items)
    for group in (slice(0, 4), slice(4, 8), slice(8, 12)):
        np.testing.assert_allclose(out[group].mean(), 0, atol=1e-9)
        np.testing.assert_allclose(out[group].std(), 1, rtol=1e-9)
        assert (np.argsort(out[group]) == np.argsort(raw[group])).all()  # ranks kept
    # the same prompt for two users is two groups; a lone or constant group is 0
    z = normalize_per_prompt([1.0, 3.0, 5.0, 2.0, 2.0], [("a", "p"), ("a", "p"), ("b", "p"), "q", "q"])
    np.testing.assert_allclose(z, [-1, 1, 0, 0, 0])


# --- over HTTP ---------------------------------------------------------------------------------------------
def test_service_reward_equals_the_estimator(service_url, est):
    with PersonalReward.from_service(service_url) as reward:
        out = reward(prompts=PROMPTS, completions=ITEMS, **trl_kwargs())
        np.testing.assert_allclose(out, est.reward(USERS, PROMPTS, ITEMS), rtol=1e-5, atol=1e-6)
        reward.scorer.max_queries = 4  # a batch larger than one request: split into chunks, order kept
        items = [f"item-{i}" for i in range(11)]
        users = [f"user-{i % 5}" for i in range(11)]
        chunked = reward(prompts=["ctx-1"] * 11, completions=items, user_id=users)
        np.testing.assert_allclose(chunked, est.reward(users, "ctx-1", items), rtol=1e-5, atol=1e-6)
    for mode in (0, 1, [0.25, 0.75]):
        with PersonalReward.from_service(service_url, mode=mode, normalize=True) as remote:
            local = PersonalReward.from_estimator(est, mode=mode, normalize=True)
            expected = local(prompts=PROMPTS, completions=ITEMS)
            np.testing.assert_allclose(remote(prompts=PROMPTS, completions=ITEMS), expected, atol=1e-5)


def test_get_reward_equals_score(http):
    score = http.post("/v1/score", json={"user_id": "user-1", "prompt": "ctx-2", "responses": ITEMS}).json()
    body = {"query": [f"ctx-2{c}" for c in ITEMS], "prompts": ["ctx-2"] * len(ITEMS)}
    for extra, params in (
        ({"user_id": "user-1"}, {}),
        ({"user_ids": ["user-1"] * len(ITEMS)}, {}),
        ({}, {"user_id": "user-1"}),  # OpenRLHF: --remote_rm_url http://host/get_reward?user_id=user-1
        ({"labels": ["user-1"] * len(ITEMS)}, {"users_from_labels": "true"}),
    ):
        out = http.post("/get_reward", json=body | extra, params=params)  # no token: it only reads
        assert out.status_code == 200, out.text
        assert out.json() == {"rewards": score["rewards"], "weights": ["fitted"] * len(ITEMS)}
    # one call for several users equals one /v1/score per user; strangers are zero-shot
    users = ["user-1", "nobody", "user-3", "user-1", "nobody", "user-0"]
    mixed = http.post("/get_reward", json=body | {"user_ids": users}).json()
    for i, user in enumerate(users):
        single = {"user_id": user, "prompt": "ctx-2", "responses": [ITEMS[i]]}
        one = http.post("/v1/score", json=single).json()
        assert mixed["rewards"][i] == pytest.approx(one["rewards"][0], abs=1e-6)
        assert mixed["weights"][i] == one["weights"]
    # no user at all: the zero-shot weights; fixed weights are labelled "fixed"
    zero = http.post("/get_reward", json=body).json()
    assert zero["weights"] == ["zero-shot"] * len(ITEMS)
    nobody = http.post("/v1/score", json={"user_id": "nobody", "prompt": "ctx-2", "responses": ITEMS}).json()
    assert zero["rewards"] == nobody["rewards"]
    assert http.post("/get_reward", json=body | {"weights": [1, 0]}).json()["weights"] == ["fixed"] * 6


@pytest.mark.parametrize(
    ("body", "params", "field"),
    [
        ({"prompts": ["ctx-0"]}, {}, "query"),
        ({"query": []}, {}, "query"),
        ({"query": "ctx-0item-0"}, {}, "query"),
        ({"query": ["ctx-0item-0"] * 1025}, {}, "query"),
        ({"query": ["ctx-0item-0", "ctx-0item-1"], "prompts": ["ctx-0"]}, {}, "prompts"),
        ({"query": ["ctx-0item-0"], "prompts": ["ctx-1"]}, {}, "query.0"),
        ({"query": ["ctx-0item-0"], "prompts": ["ctx-0"], "colour": "red"}, {}, "colour"),
        ({"query": ["ctx-0item-0"], "prompts": ["ctx-0"], "user_id": "a", "user_ids": ["a"]}, {}, "user_ids"),
        ({"query": ["ctx-0item-0"], "prompts": ["ctx-0"], "user_id": "a"}, {"user_id": "b"}, "?user_id"),
        ({"query": ["ctx-0item-0"] * 2, "prompts": ["ctx-0"] * 2, "user_ids": ["a"]}, {}, "user_ids"),
        ({"query": ["ctx-0item-0"], "prompts": ["ctx-0"], "user_ids": [""]}, {}, "user_ids.0"),
        ({"query": ["ctx-0item-0"], "prompts": ["ctx-0"], "weights": [1.0]}, {}, "weights"),
        ({"query": ["ctx-0item-0"], "prompts": ["ctx-0"]}, {"users_from_labels": "true"}, "labels"),
        ({"query": ["ctx-0nothing"], "prompts": ["ctx-0"]}, {}, "query"),
        ({"query": ["nothingitem-0"], "prompts": ["nothing"]}, {}, "prompts"),
    ],
)
def test_get_reward_refuses_bad_bodies(http, body, params, field):
    out = http.post("/get_reward", json=body, params=params)
    assert out.status_code == 422, out.text
    payload = out.json()
    assert payload["error"] == "invalid request" and f"field '{field}'" in payload["detail"], payload
    assert "Traceback" not in out.text


def test_get_reward_in_openapi_and_limits(http):
    spec = http.get("/openapi.json").json()
    operation = spec["paths"]["/get_reward"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("RewardRequest")
    assert {"200", "401", "413", "422"} <= set(operation["responses"])
    assert {p["name"] for p in operation["parameters"]} == {"user_id", "users_from_labels"}
    request = spec["components"]["schemas"]["RewardRequest"]
    assert {"query", "prompts", "labels", "user_id", "user_ids", "weights"} == set(request["properties"])
    assert http.get("/v1/model").json()["limits"]["max_queries"] == 1024


# --- TRL ------------------------------------------------------------------------------------------------
WORDS = ["red", "green", "blue", "apple", "sky", "sun", "tree", "water", "question", ":", "0", "1", "2"]


def lora_b(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}


def test_grpo_step_with_the_reward_changes_the_adapter(model_dir, tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from trl import GRPOConfig, GRPOTrainer

    from pluralign.dpo.models import tiny_causal_lm, word_tokenizer

    est = PALEstimator.load(model_dir)
    est.set_params(encoder=HashEncoder())
    tokenizer = word_tokenizer(WORDS)
    model = get_peft_model(
        tiny_causal_lm(len(tokenizer), seed=0),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    reward = PersonalReward.from_estimator(est)
    seen = []
    score = reward.scorer.score
    reward.scorer.score = lambda *args: seen.append(args) or score(*args)
    rows = [{"prompt": f"question {i} :", "user_id": f"user-{i}", "topic": i} for i in range(4)]
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        max_steps=1,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        save_strategy="no",
        logging_steps=1,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    before = lora_b(model)
    assert all(not b.any() for b in before.values())  # LoRA's B starts at zero
    trainer.train()
    after = lora_b(model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    (prompts, completions, users, weights), *_ = seen
    assert len(completions) == 4 and len(set(users)) == 1 and weights is None  # one prompt, its user, G=4
    logged = trainer.state.log_history[0]
    assert np.isfinite(logged["rewards/pluralign_user_reward/mean"])
    expected = est.reward(users, prompts, completions)
    assert logged["rewards/pluralign_user_reward/mean"] == pytest.approx(float(expected.mean()), abs=1e-5)


def docs_example() -> str:
    text = DOC.read_text()
    section = text[text.index("## In process: a GRPO run") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_docs_example_runs_reduced(model_dir, tmp_path, monkeypatch):
    """docs/rl.md's GRPO example with a tiny model and tokenizer, one step, and a hashing encoder."""
    pytest.importorskip("trl")
    from pluralign.dpo.models import tiny_causal_lm, word_tokenizer

    est = PALEstimator.load(model_dir)
    est.set_params(encoder=HashEncoder())
    code = docs_example()
    swaps = {
        'PersonalReward.from_estimator("runs/pal")': "PersonalReward.from_estimator(EST)",
        'AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")': "TINY_LM",
        'AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")': "TOKENIZER",
        "max_steps=200": "max_steps=1, use_cpu=True, report_to=[], disable_tqdm=True",
        "max_completion_length=64": "max_completion_length=4",
        'output_dir="grpo-pal"': "output_dir=OUT",
    }
    for old, new in swaps.items():
        assert old in code, old  # the docs changed: keep this test in step
        code = code.replace(old, new)
    tokenizer = word_tokenizer([*WORDS, "How should I learn to cook? What is a good first bike?"])
    namespace = {
        "EST": est,
        "TINY_LM": tiny_causal_lm(len(tokenizer), seed=0),
        "TOKENIZER": tokenizer,
        "OUT": str(tmp_path / "grpo"),
        "__name__": "docs_example",
    }
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOC), "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 1
    assert any(p.detach().abs().sum() > 0 for n, p in trainer.model.named_parameters() if "lora_B" in n)

"""PAL-Large (encoder trained end to end), the cumulative per-prefix loss, and mixed-modality vectors.

A tiny randomly initialized BERT (2 layers, width 32) with the MiniLM tokenizer files stands in for the
encoder, so every test runs in seconds and offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from typer.testing import CliRunner

from pluralign.cli import app
from pluralign.data import read_preferences
from pluralign.encoders import (
    PrecomputedEncoder,
    SentenceTransformerEncoder,
    default_model_path,
    save_vectors,
)
from pluralign.encoders.tokens import prefix_features
from pluralign.errors import CheckpointError, DataError, PluralignError
from pluralign.estimator import PALA, PALB, PALALarge, PALBLarge, PALEstimator
from pluralign.models.base import Batch
from pluralign.models.encoder import TextTower
from pluralign.models.pal_b import PALBModel
from pluralign.training.config import TrainConfig
from pluralign.training.large import TowerSource, _rows_loss, fit_large
from pluralign.training.losses import get_loss, prefix_pairs

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def make_tiny_bert(path: Path, vocab_size: int = 30522, seed: int = 0) -> Path:
    """A random 2-layer BERT of width 32 with MiniLM's tokenizer, saved as safetensors."""
    from transformers import BertConfig, BertModel

    path.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (default_model_path() / name).is_file():
            shutil.copy(default_model_path() / name, path / name)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def toy_frame(n_users: int = 6, per_user: int = 8) -> pd.DataFrame:
    """Two tastes (art vs music); responses of different lengths that share their first words."""
    rows = []
    for u in range(n_users):
        likes, other = ("art", "music") if u % 2 else ("music", "art")
        for j in range(per_user):
            rows.append(
                {
                    "user_id": f"u{u}",
                    "prompt": "what do you like?" if j % 2 else "tell me about your weekend",
                    "chosen": f"i like {likes} very much" if j % 3 else f"{likes} of course",
                    "rejected": f"i like {other}" if j % 4 else f"{other} sometimes, i guess",
                }
            )
    return pd.DataFrame(rows)


LARGE = {"dim": 8, "batch_size": 8, "epochs": 3, "lr_maps": 3e-3, "lr_users": 5e-2, "encoder_lr": 1e-3}


# ---------------------------------------------------------------------------------------------------------
def test_large_step_decreases_loss_and_moves_encoder(tiny_bert):
    tower = TextTower.from_pretrained(tiny_bert, max_length=32)
    data = read_preferences(toy_frame(2, 4))
    items, contexts = tower.tokenize(data.items), tower.tokenize(data.contexts)
    torch.manual_seed(0)
    model = PALBModel(data.n_users, 2, tower.dim, tower.dim, dim=8)
    batch = Batch(*(torch.from_numpy(a) for a in (data.user, data.context, data.chosen, data.rejected)))
    source = TowerSource(tower, items, contexts)
    logistic = get_loss("logistic")

    def loss_now() -> float:
        tower.eval(), model.eval()  # no dropout: the same function before and after
        with torch.no_grad():
            return float(_rows_loss(model, source, batch, None, logistic)[0]) / len(batch)

    before_encoder = {k: v.clone() for k, v in tower.state_dict().items()}
    before = loss_now()
    config = TrainConfig(
        epochs=1, batch_size=len(batch), max_steps=1, lr_maps=1e-2, encoder_lr=1e-3, progress=False
    )
    history = fit_large(model, source, batch, None, config)
    after = loss_now()
    assert after < before
    assert history.steps == 1 and history.records[0]["step"] == 1
    moved = [k for k, v in tower.state_dict().items() if not torch.equal(v, before_encoder[k])]
    assert any("encoder.layer.0" in k for k in moved) and any("word_embeddings" in k for k in moved)


def test_gradient_accumulation_matches_one_big_batch(tiny_bert):
    """Two micro-batches of 4 give the same update as one batch of 8 (mean loss, dropout off)."""
    data = read_preferences(toy_frame(2, 4))
    batch = Batch(*(torch.from_numpy(a) for a in (data.user, data.context, data.chosen, data.rejected)))
    results = []
    for batch_size, accum in ((8, 1), (4, 2)):
        tower = TextTower.from_pretrained(tiny_bert, max_length=32)
        tower.model.config.hidden_dropout_prob = 0.0
        for m in tower.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        torch.manual_seed(0)
        model = PALBModel(data.n_users, 2, tower.dim, tower.dim, dim=8)
        source = TowerSource(tower, tower.tokenize(data.items), tower.tokenize(data.contexts))
        config = TrainConfig(
            epochs=1, batch_size=batch_size, grad_accum_steps=accum, max_steps=1, progress=False, seed=3
        )
        fit_large(model, source, batch, None, config)
        results.append(torch.cat([p.detach().flatten() for p in [*model.parameters(), *tower.parameters()]]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-6)


def test_estimator_trains_saves_and_loads_identically(tiny_bert, tmp_path):
    frame = toy_frame()
    est = PALBLarge(n_prototypes=2, encoder=str(tiny_bert), max_length=32, **LARGE).fit(frame)
    losses = [e["train_loss"] for e in est.history_.epochs]
    assert losses[-1] < losses[0]
    initial = load_file(str(tiny_bert / "model.safetensors"))
    trained = est.encoder_.tower.model.state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial if k in trained)

    est.save(tmp_path / "m")
    files = {p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert {"encoder/model.safetensors", "encoder/config.json", "encoder/tokenizer.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".pickle"))]
    loaded = PALEstimator.load(tmp_path / "m")
    assert type(loaded) is PALBLarge and loaded.encoder_lr == LARGE["encoder_lr"]
    for key, value in loaded.encoder_.tower.model.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0)
    np.testing.assert_array_equal(loaded.margins(frame), est.margins(frame))
    responses = ["i like art", "music of course"]
    np.testing.assert_array_equal(
        loaded.reward("u1", "what do you like?", responses), est.reward("u1", "what do you like?", responses)
    )
    # the fine-tuned encoder is what predicts: scoring re-embeds with it, not with the starting weights
    assert json.loads((tmp_path / "m" / "config.json").read_text())["params"]["encoder"]["model"] == str(
        tiny_bert.resolve()
    )

    weights = tmp_path / "m" / "encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        PALEstimator.load(tmp_path / "m")


def test_pal_a_large_and_new_users(tiny_bert):
    frame = toy_frame()
    est = PALALarge(n_prototypes=2, encoder=str(tiny_bert), max_length=32, **LARGE).fit(frame)
    weights = est.fit_weights(frame.assign(user_id="new-" + frame["user_id"]))
    assert len(weights) == 6 and np.allclose(weights.filter(like="w").sum(axis=1), 1.0)
    assert 0.0 <= est.score(frame) <= 1.0


# ---------------------------------------------------------------------------------------------------------
def _reference_prefix_pairs(lc: int, lr: int, common: int, weighting: str) -> list[tuple[int, int, float]]:
    end = max(lc, lr)
    start = min(common, end - 1)
    raw = [
        (min(t, lc - 1), min(t, lr - 1), float(t - start + 1) if weighting == "linear" else 1.0)
        for t in range(start, end)
    ]
    total = sum(w for *_, w in raw)
    return [(a, b, w / total) for a, b, w in raw]


@pytest.mark.parametrize("weighting", ["linear", "uniform"])
def test_prefix_pairs_match_a_loop(weighting):
    gen = torch.Generator().manual_seed(0)
    lc = torch.randint(1, 9, (50,), generator=gen)
    lr = torch.randint(1, 9, (50,), generator=gen)
    common = torch.minimum(torch.randint(0, 9, (50,), generator=gen), torch.minimum(lc, lr))
    chosen_pos, rejected_pos, weights = prefix_pairs(lc, lr, common, weighting)
    for b in range(50):
        expected = _reference_prefix_pairs(int(lc[b]), int(lr[b]), int(common[b]), weighting)
        valid = torch.nonzero(weights[b] > 0).flatten().tolist()
        got = [(int(chosen_pos[b, t]), int(rejected_pos[b, t]), float(weights[b, t])) for t in valid]
        assert [g[:2] for g in got] == [e[:2] for e in expected]
        np.testing.assert_allclose([g[2] for g in got], [e[2] for e in expected], rtol=1e-6)
    # the paper's weighting: weight of the i-th compared prefix is i / (L (L + 1) / 2)
    _, _, w = prefix_pairs(torch.tensor([4]), torch.tensor([4]), torch.tensor([0]), "linear")
    np.testing.assert_allclose(w[0].numpy(), np.array([1, 2, 3, 4]) / 10, rtol=1e-6)


@pytest.mark.parametrize("loss", ["cumulative", "cumulative-mean"])
def test_cumulative_loss_equals_a_per_prefix_loop(tiny_bert, loss):
    """The vectorized loss against text-by-text, prefix-by-prefix rewards through model.rewards."""
    tower = TextTower.from_pretrained(tiny_bert, max_length=32)
    tower.normalize = True
    tower.eval()
    data = read_preferences(toy_frame(2, 6))
    items, contexts = tower.tokenize(data.items), tower.tokenize(data.contexts)
    torch.manual_seed(0)
    model = PALBModel(data.n_users, 3, tower.dim, tower.dim, dim=8).eval()
    batch = Batch(*(torch.from_numpy(a) for a in (data.user, data.context, data.chosen, data.rejected)))
    with torch.no_grad():
        got = _rows_loss(
            model,
            TowerSource(tower, items, contexts),
            batch,
            "linear" if loss == "cumulative" else "uniform",
            None,
        )[0] / len(batch)

        def states(table, i):  # one text alone: its token states
            ids = table.ids[table.offsets[i] : table.offsets[i + 1]]
            return tower.model(
                input_ids=ids[None], attention_mask=torch.ones_like(ids)[None]
            ).last_hidden_state[0]

        expected = []
        for b in range(len(batch)):
            u, c, x, y = (int(t[b]) for t in batch)
            sx, sy = states(items, x), states(items, y)
            ctx = F.normalize(states(contexts, c).mean(0), dim=-1)
            ids_x = items.ids[items.offsets[x] : items.offsets[x + 1]].tolist()
            ids_y = items.ids[items.offsets[y] : items.offsets[y + 1]].tolist()
            common = 0
            while common < min(len(ids_x), len(ids_y)) and ids_x[common] == ids_y[common]:
                common += 1
            pairs = _reference_prefix_pairs(
                len(ids_x), len(ids_y), common, "linear" if loss == "cumulative" else "uniform"
            )
            w_u = model.weights()[u]
            total = 0.0
            for px, py, weight in pairs:
                vx = F.normalize(sx[: px + 1].mean(0), dim=-1)
                vy = F.normalize(sy[: py + 1].mean(0), dim=-1)
                r = model.rewards(w_u, torch.stack([vx, vy]), torch.stack([ctx, ctx]))
                total += weight * float(F.softplus(-(r[0] - r[1])))
            expected.append(total)
    assert float(got) == pytest.approx(float(np.mean(expected)), rel=1e-5)


def test_tiny_prefix_features_are_running_means(tiny_bert, tmp_path):
    encoder = SentenceTransformerEncoder(tiny_bert)
    texts = ["i like art very much", "music", "tell me about your weekend"]
    features = prefix_features(texts, encoder, dtype=torch.float32, cache_dir=tmp_path)
    model = encoder.load_model()
    tokens = model.encode(texts, output_value="token_embeddings", convert_to_numpy=False)
    for i, states in enumerate(tokens):
        rows = features.vectors[features.tokens.offsets[i] : features.tokens.offsets[i + 1]]
        expected = torch.cumsum(states.float(), 0) / torch.arange(1, len(states) + 1)[:, None]
        torch.testing.assert_close(rows, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features.last().numpy(), encoder.encode(texts), rtol=1e-5, atol=1e-6)
    cached = prefix_features(texts, encoder, dtype=torch.float32, cache_dir=tmp_path)  # read back
    torch.testing.assert_close(cached.vectors, features.vectors)
    assert len(list((tmp_path / "token-prefixes").glob("*.safetensors"))) == 1


def test_tiny_cumulative_trains_and_adapts(tiny_bert):
    frame = toy_frame()
    params = {"dim": 8, "epochs": 15, "batch_size": 16, "lr_maps": 1e-2, "lr_users": 5e-2, "patience": None}
    est = PALB(n_prototypes=2, encoder=str(tiny_bert), loss="cumulative", **params).fit(frame, val=frame)
    losses = [e["train_loss"] for e in est.history_.epochs]
    assert losses[-1] < losses[0] and est.history_.best_val_accuracy is not None
    weights = est.fit_weights(frame.head(8).assign(user_id="new"))  # exact solver, logistic on responses
    assert weights.filter(like="w").sum(axis=1).iloc[0] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------
def test_mismatched_tokenizer_and_encoder(tmp_path):
    small = make_tiny_bert(tmp_path / "small", vocab_size=1000)
    with pytest.raises(PluralignError, match="tokenizer has 30522 tokens but the encoder embeds only 1000"):
        TextTower.from_pretrained(small)
    with pytest.raises(PluralignError, match="tokenizer has 30522 tokens"):
        PALBLarge(encoder=str(small), **LARGE).fit(toy_frame())


def test_bad_encoders_are_refused(tiny_bert, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", *TOKENIZER_FILES):
        if (tiny_bert / name).is_file():
            shutil.copy(tiny_bert / name, pickled / name)
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(PluralignError, match=r"no model\.safetensors"):
        TextTower.from_pretrained(pickled)
    with pytest.raises(PluralignError, match="does not exist"):
        TextTower.from_pretrained(tmp_path / "missing")
    vectors = tmp_path / "v.npz"
    save_vectors(vectors, ["a", "b"], np.ones((2, 4), dtype=np.float32))
    with pytest.raises(PluralignError, match="precomputed vectors train with PALA/PALB"):
        PALBLarge(encoder=str(vectors)).fit(toy_frame())
    frame = pd.DataFrame({"user_id": ["u"], "prompt": ["a"], "chosen": ["a"], "rejected": ["b"]})
    with pytest.raises(PluralignError, match="token-level features"):
        PALB(encoder=str(vectors), loss="cumulative", epochs=1).fit(frame)
    with pytest.raises(ValueError, match="fp16 autocast needs a CUDA device"):
        PALBLarge(encoder=str(tiny_bert), precision="fp16").fit(toy_frame())


def test_bf16_autocast_on_cpu(tiny_bert):
    est = PALBLarge(n_prototypes=2, encoder=str(tiny_bert), precision="bf16", max_length=32, **LARGE)
    est.fit(toy_frame())
    assert np.isfinite(est.margins(toy_frame())).all()


# ---------------------------------------------------------------------------------------------------------
@pytest.fixture()
def image_data(tmp_path):
    """Pick-a-Pic-like: items are images (512-d vectors), contexts are prompts (384-d vectors)."""
    rng = np.random.default_rng(0)
    images = [f"img-{i}" for i in range(30)]
    prompts = [f"a photo of thing {j}" for j in range(5)]
    save_vectors(tmp_path / "images.parquet", images, rng.normal(size=(30, 512)).astype(np.float32))
    save_vectors(tmp_path / "prompts.parquet", prompts, rng.normal(size=(5, 384)).astype(np.float32))
    taste = rng.normal(size=512)
    score = dict(zip(images, rng.normal(size=(30, 512)) @ taste, strict=True))
    rows = []
    for u in range(10):
        sign = 1 if u % 2 else -1
        for _ in range(20):
            a, b = rng.choice(images, 2, replace=False)
            better = a if sign * (score[a] - score[b]) > 0 else b
            rows.append(
                {
                    "user_id": f"u{u}",
                    "prompt": str(rng.choice(prompts)),
                    "chosen": better,
                    "rejected": b if better == a else a,
                }
            )
    pd.DataFrame(rows).to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    return tmp_path


@pytest.mark.parametrize("cls", [PALA, PALB])
def test_mixed_modality_vectors_with_different_dims(image_data, cls, tmp_path):
    params = {"dim": 8, "epochs": 20, "batch_size": 64, "patience": None}
    est = cls(
        n_prototypes=2,
        encoder=str(image_data / "images.parquet"),
        context_encoder=str(image_data / "prompts.parquet"),
        **params,
    ).fit(image_data / "train.jsonl")
    assert (est.item_dim_, est.context_dim_) == (512, 384)
    margins = est.margins(image_data / "train.jsonl")
    rewards = est.reward("u1", "a photo of thing 0", ["img-0", "img-1"])
    est.save(tmp_path / "m")
    loaded = PALEstimator.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.margins(image_data / "train.jsonl"), margins)
    np.testing.assert_array_equal(loaded.reward("u1", "a photo of thing 0", ["img-0", "img-1"]), rewards)

    # the same data given as vectors directly (PreferenceData.with_vectors) trains the same model
    data = read_preferences(image_data / "train.jsonl")
    items = PrecomputedEncoder.from_file(image_data / "images.parquet").encode(list(data.items))
    contexts = PrecomputedEncoder.from_file(image_data / "prompts.parquet").encode(list(data.contexts))
    direct = cls(n_prototypes=2, **params).fit(data.with_vectors(items, contexts))
    np.testing.assert_allclose(
        direct.margins(data.with_vectors(items, contexts)), margins, rtol=1e-5, atol=1e-5
    )


def test_mixed_modality_wrong_dims_are_clear_errors(image_data):
    est = PALB(
        n_prototypes=2,
        dim=8,
        epochs=2,
        encoder=str(image_data / "images.parquet"),
        context_encoder=str(image_data / "prompts.parquet"),
    ).fit(image_data / "train.jsonl")
    data = read_preferences(image_data / "train.jsonl")
    wrong = data.with_vectors(np.zeros((len(data.items), 384)), np.zeros((len(data.contexts), 384)))
    with pytest.raises(
        DataError, match="item=384, context=384 but the model was trained on item=512, context=384"
    ):
        est.margins(wrong)
    with pytest.raises(ValueError, match="item_vectors has 3 rows"):
        data.with_vectors(np.zeros((3, 512)), np.zeros((len(data.contexts), 384)))
    # prompts looked up in the image file (no context encoder): a missing key, named
    with pytest.raises(DataError, match="no precomputed vector"):
        PALB(encoder=str(image_data / "images.parquet"), epochs=1).fit(image_data / "train.jsonl")


# ---------------------------------------------------------------------------------------------------------
def test_cli_train_encoder_trainable(tiny_bert, tmp_path):
    toy_frame().to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "train",
            str(tmp_path / "train.jsonl"),
            "--out",
            str(tmp_path / "run"),
            "--encoder",
            str(tiny_bert),
            "--encoder-trainable",
            "--k",
            "2",
            "--dim",
            "8",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--loss",
            "cumulative",
            "--max-length",
            "32",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model" / "encoder" / "model.safetensors").is_file()
    result = runner.invoke(app, ["eval", str(tmp_path / "run"), str(tmp_path / "train.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    assert 0.0 <= json.loads(result.output)[0]["accuracy"] <= 1.0
    result = runner.invoke(
        app,
        [
            "train",
            str(tmp_path / "train.jsonl"),
            "--out",
            str(tmp_path / "r2"),
            "--model",
            "btl",
            "--encoder-trainable",
            "--encoder",
            str(tiny_bert),
        ],
    )
    assert result.exit_code == 2 and "--encoder-trainable is for pal-a and pal-b" in result.output


# ---------------------------------------------------------------------------------------------------------
def _state(est) -> dict[str, torch.Tensor]:
    heads = {f"head.{k}": v for k, v in est.model_.state_dict().items()}
    return heads | {f"tower.{k}": v for k, v in est.encoder_.tower.state_dict().items()}


def _without_seconds(epochs: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in epochs]


def test_large_in_process_crash_and_resume_match(tiny_bert, tmp_path, monkeypatch):
    """PAL-Large checkpoints the tower too: a crashed and resumed fit ends bit-identical to one that ran
    through (dropout in the tower, gradient accumulation, the cumulative loss, validation)."""
    from pluralign.training import resume as resume_module

    frame = toy_frame()
    params = dict(n_prototypes=2, encoder=str(tiny_bert), max_length=32, loss="cumulative", seed=2)
    params |= {**LARGE, "epochs": 4, "batch_size": 4, "grad_accum_steps": 2, "patience": 3}
    reference = PALBLarge(**params).fit(frame, val=frame.head(16))
    params |= {"checkpoint_dir": tmp_path / "ckpt", "checkpoint_every": 5}
    original, saves = resume_module.Checkpointer.save, [0]

    def crash_on_third(self, run):
        path = original(self, run)
        saves[0] += 1
        if saves[0] == 3:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(resume_module.Checkpointer, "save", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        PALBLarge(**params).fit(frame, val=frame.head(16))
    monkeypatch.undo()
    resumed = PALBLarge(**params).fit(frame, val=frame.head(16), resume=True)
    assert _without_seconds(resumed.history_.epochs) == _without_seconds(reference.history_.epochs)
    want, got = _state(reference), _state(resumed)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    with pytest.raises(CheckpointError, match=r"other training settings \(encoder_lr: 0.001 -> 0.002\)"):
        PALBLarge(**{**params, "encoder_lr": 2e-3}).fit(frame, val=frame.head(16), resume=True)


@pytest.mark.slow
def test_large_cli_sigkill_then_resume_is_bit_identical(tiny_bert, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    toy_frame().to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    toy_frame(4, 4).to_json(tmp_path / "val.jsonl", orient="records", lines=True)
    options = [
        str(tmp_path / "train.jsonl"),
        "--val",
        str(tmp_path / "val.jsonl"),
        "--encoder",
        str(tiny_bert),
    ]
    options += ["--encoder-trainable", "--k", "2", "--dim", "8", "--epochs", "30", "--batch-size", "4"]
    options += ["--grad-accum-steps", "2", "--max-length", "32", "--encoder-lr", "1e-3", "--lr-maps", "3e-3"]
    options += ["--patience", "25", "--seed", "4"]  # 6 steps an epoch, 180 in all
    runner = CliRunner()
    reference = tmp_path / "reference"
    result = runner.invoke(app, ["train", *options, "--out", str(reference)])
    assert result.exit_code == 0, result.output

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the tests' thread count
    command = [sys.executable, "-m", "pluralign.cli", "train", *options, "--out", str(run)]
    proc = subprocess.Popen(
        [*command, "--checkpoint-every", "10"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def newest() -> int:
        return max((int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("state-*.json")), default=0)

    try:
        deadline = time.monotonic() + 300
        # past epoch 4: the history, the best epoch's weights (heads and tower) and patience are saved
        while newest() < 30 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 30 <= newest() < 180 and not (run / "model").exists()

    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output

    def metrics(path: Path) -> list[dict]:
        return _without_seconds([json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()])

    assert metrics(run) == metrics(reference) and len(metrics(run)) > 6  # past the kill
    for weights in ("model/model.safetensors", "model/encoder/model.safetensors"):
        got, want = load_file(run / weights), load_file(reference / weights)
        assert got.keys() == want.keys()
        for name in want:
            assert torch.equal(got[name], want[name]), (weights, name)
    assert json.loads((run / "train.json").read_text())["status"] == "finished"

"""`pluralign serve`: every endpoint over HTTP (uvicorn on 127.0.0.1), state, auth, limits, client, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn
from typer.testing import CliRunner

from pluralign.cli import app as cli_app
from pluralign.client import AuthError, NotFoundError, PluralignClient, RequestError, ServiceUnavailable
from pluralign.errors import PluralignError
from pluralign.estimator import PALEstimator
from pluralign.serve import create_app
from pluralign.serve.embedder import MicroBatchEmbedder
from pluralign.serve.testing import make_demo_model

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_demo_model(tmp_path_factory.mktemp("serve_model"))


@pytest.fixture(scope="module")
def est(model_dir) -> PALEstimator:
    return PALEstimator.load(model_dir)


@contextlib.contextmanager
def running(app):
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def serve(model_dir, tmp_path):
    """serve(**create_app options) -> (base_url, http client); state in tmp_path/state.db by default."""
    stack = contextlib.ExitStack()

    def start(**options):
        options.setdefault("token", TOKEN)
        state = options.pop("state", tmp_path / "state.db")
        url = stack.enter_context(running(create_app(model_dir, state, **options)))
        client = stack.enter_context(httpx.Client(base_url=url, timeout=30))
        return url, client

    with stack:
        yield start


def comparisons(*rows):
    return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows]


ROWS = [("ctx-0", "item-0", "item-1"), ("ctx-1", "item-2", "item-3"), ("ctx-2", "item-5", "item-4")]


# --- reads ------------------------------------------------------------------------------------------------
def test_health_model_and_openapi(serve, est):
    _, http = serve()
    health = http.get("/v1/health").json()
    assert health["status"] == "ok" and health["read_only"] is False
    info = http.get("/v1/model").json()
    assert info["model_type"] == "pal_b" and info["estimator"] == "PALB"
    assert info["n_prototypes"] == 2 and info["checkpoint_users"] == len(est.users_)
    assert info["encoder_id"] == est.get_encoder().id and info["state_users"] == 0
    assert np.allclose(info["zero_shot_weights"], est.zero_shot_weights_.numpy())
    spec = http.get("/openapi.json").json()
    assert {"/v1/score", "/v1/feedback", "/v1/next-question", "/v1/users/{user_id}", "/v1/health"} <= set(
        spec["paths"]
    )
    score_schema = spec["components"]["schemas"]["ScoreRequest"]
    assert "description" in score_schema["properties"]["responses"] and "examples" in score_schema
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_score_equals_estimator_reward_and_flags_zero_shot(serve, est):
    _, http = serve()
    responses = ["item-0", "item-1", "item-2", "item-3", "item-4"]
    for user, kind in (("user-3", "fitted"), ("somebody-new", "zero-shot")):
        out = http.post("/v1/score", json={"user_id": user, "prompt": "ctx-4", "responses": responses})
        assert out.status_code == 200, out.text
        body = out.json()
        expected = est.reward(user, "ctx-4", responses)
        assert body["weights"] == kind
        np.testing.assert_allclose(body["rewards"], expected, rtol=1e-6, atol=1e-6)
        assert body["order"] == np.argsort(-expected, kind="stable").tolist()
        assert body["best"] == body["order"][0]


# --- feedback ---------------------------------------------------------------------------------------------
def test_feedback_refits_from_all_stored_comparisons(serve, est):
    _, http = serve()
    first = http.post(
        "/v1/feedback", headers=AUTH, json={"user_id": "alice", "comparisons": comparisons(ROWS[0])}
    )
    assert first.status_code == 200, first.text
    assert first.json()["n_comparisons"] == 1 and first.json()["added"] == 1
    second = http.post(
        "/v1/feedback", headers=AUTH, json={"user_id": "alice", "comparisons": comparisons(*ROWS[1:])}
    ).json()
    assert second["n_comparisons"] == 3 and second["added"] == 2
    # the same few-shot fit, done directly on all three rows
    frame = pd.DataFrame(ROWS, columns=["prompt", "chosen", "rejected"]).assign(user_id="alice")
    direct = est.copy().adapt(frame)
    np.testing.assert_allclose(second["weights"], direct.loc["alice", ["w0", "w1"]], atol=1e-8)
    user = http.get("/v1/users/alice").json()
    assert user["source"] == "feedback" and user["n_comparisons"] == 3
    assert user["weights"] == second["weights"]
    assert user["created_at"] <= user["updated_at"] and user["created_at"].endswith("Z")
    # scoring now uses the fitted weights
    scored = http.post(
        "/v1/score", json={"user_id": "alice", "prompt": "ctx-0", "responses": ["item-0"]}
    ).json()
    assert scored["weights"] == "fitted"
    adapted = est.copy()
    adapted.adapt(frame)
    np.testing.assert_allclose(scored["rewards"], adapted.reward("alice", "ctx-0", ["item-0"]), atol=1e-5)


def test_concurrent_feedback_loses_nothing(serve, tmp_path):
    url, _ = serve()

    def send(thread: int) -> list[int]:
        counts = []
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
            for i in range(5):
                row = (f"ctx-{(thread + i) % 30}", f"item-{2 * thread}", f"item-{2 * thread + 1 + i}")
                out = http.post("/v1/feedback", json={"user_id": "carol", "comparisons": comparisons(row)})
                assert out.status_code == 200, out.text
                counts.append(out.json()["n_comparisons"])
        return counts

    with ThreadPoolExecutor(8) as pool:
        counts = [c for part in pool.map(send, range(8)) for c in part]
    assert sorted(counts) == list(range(1, 41))  # each request saw every earlier one
    with httpx.Client(base_url=url) as http:
        assert http.get("/v1/users/carol").json()["n_comparisons"] == 40
    db = sqlite3.connect(tmp_path / "state.db")
    assert db.execute("SELECT COUNT(*) FROM comparisons WHERE user_id = 'carol'").fetchone()[0] == 40
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_restart_keeps_state(serve, model_dir, tmp_path):
    state = tmp_path / "kept.db"
    with running(create_app(model_dir, state, token=TOKEN)) as url, httpx.Client(base_url=url) as http:
        fitted = http.post(
            "/v1/feedback", headers=AUTH, json={"user_id": "user-2", "comparisons": comparisons(*ROWS)}
        ).json()
        scored = http.post(
            "/v1/score", json={"user_id": "user-2", "prompt": "ctx-1", "responses": ["item-7"]}
        )
        assert http.delete("/v1/users/user-5", headers=AUTH).status_code == 200
    # a new app on the same database: the feedback user overrides the checkpoint's user-2, user-5 stays gone
    _, http = serve(state=state)
    user = http.get("/v1/users/user-2").json()
    assert (
        user["source"] == "feedback" and user["weights"] == fitted["weights"] and user["n_comparisons"] == 3
    )
    again = http.post("/v1/score", json={"user_id": "user-2", "prompt": "ctx-1", "responses": ["item-7"]})
    assert again.json() == scored.json()
    assert http.get("/v1/users/user-5").status_code == 404
    assert (
        http.post("/v1/score", json={"user_id": "user-5", "responses": ["item-1"], "prompt": "ctx-1"}).json()[
            "weights"
        ]
        == "zero-shot"
    )
    assert http.get("/v1/model").json()["state_users"] == 1


def test_second_service_on_same_state_is_refused(model_dir, tmp_path):
    first = create_app(model_dir, tmp_path / "s.db", read_only=True)
    try:
        with pytest.raises(PluralignError, match="in use"):
            create_app(model_dir, tmp_path / "s.db", read_only=True)
    finally:
        first.state.service.close()


# --- next question ----------------------------------------------------------------------------------------
def test_next_question_picks_most_uncertain(serve, est):
    _, http = serve()
    candidates = [{"prompt": f"ctx-{i}", "a": f"item-{2 * i}", "b": f"item-{2 * i + 1}"} for i in range(12)]
    for user in ("user-1", "new-user"):
        out = http.post("/v1/next-question", json={"user_id": user, "candidates": candidates})
        assert out.status_code == 200, out.text
        body = out.json()
        p = np.array(
            [
                1 / (1 + np.exp(-np.subtract(*est.reward(user, c["prompt"], [c["a"], c["b"]]))))
                for c in candidates
            ]
        )
        best = int(np.argmin(np.abs(p - 0.5)))
        assert body["index"] == best and body["n_candidates"] == 12
        assert (body["prompt"], body["a"], body["b"]) == tuple(candidates[best].values())
        assert body["p_a"] == pytest.approx(p[best], abs=1e-6)
        assert body["weights"] == ("fitted" if user == "user-1" else "zero-shot")


def test_next_question_pool_skips_answered(serve, tmp_path):
    pool = [
        {"prompt": "ctx-0", "a": "item-0", "b": "item-1"},
        {"prompt": "ctx-1", "a": "item-2", "b": "item-3"},
    ]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in pool))
    _, http = serve(questions=path)
    first = http.post("/v1/next-question", json={"user_id": "dave"}).json()
    q = pool[first["index"]]
    answer = {"prompt": q["prompt"], "chosen": q["b"], "rejected": q["a"]}
    assert http.post(
        "/v1/feedback", headers=AUTH, json={"user_id": "dave", "comparisons": [answer]}
    ).is_success
    second = http.post("/v1/next-question", json={"user_id": "dave"}).json()
    assert second["index"] == 1 - first["index"] and second["n_candidates"] == 1
    other = pool[second["index"]]
    answer = {"prompt": other["prompt"], "chosen": other["a"], "rejected": other["b"]}
    assert http.post(
        "/v1/feedback", headers=AUTH, json={"user_id": "dave", "comparisons": [answer]}
    ).is_success
    done = http.post("/v1/next-question", json={"user_id": "dave"})
    assert done.status_code == 409 and "answered every" in done.json()["detail"]
    assert http.post("/v1/next-question", json={"user_id": "dave", "skip_answered": False}).is_success


# --- delete -----------------------------------------------------------------------------------------------
def test_delete_erases_user(serve, tmp_path):
    _, http = serve()
    http.post("/v1/feedback", headers=AUTH, json={"user_id": "erin", "comparisons": comparisons(*ROWS)})
    out = http.delete("/v1/users/erin", headers=AUTH)
    assert out.status_code == 200 and out.json()["comparisons_deleted"] == 3
    assert http.get("/v1/users/erin").status_code == 404
    assert http.delete("/v1/users/erin", headers=AUTH).status_code == 404
    scored = http.post(
        "/v1/score", json={"user_id": "erin", "prompt": "ctx-0", "responses": ["item-0"]}
    ).json()
    assert scored["weights"] == "zero-shot"
    db = sqlite3.connect(tmp_path / "state.db")
    assert db.execute("SELECT COUNT(*) FROM comparisons WHERE user_id = 'erin'").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM users WHERE user_id = 'erin'").fetchone()[0] == 0
    db.close()
    # a checkpoint user: weights erased, scored zero-shot from now on
    assert http.get("/v1/users/user-0").json()["source"] == "checkpoint"
    assert http.delete("/v1/users/user-0", headers=AUTH).status_code == 200
    assert http.get("/v1/users/user-0").status_code == 404


def test_unknown_user_is_404_as_json(serve):
    _, http = serve()
    out = http.get("/v1/users/nobody")
    assert out.status_code == 404
    assert out.json() == {"error": "not found", "detail": "unknown user 'nobody'"}
    assert http.get("/v1/nothing-here").json()["error"] == "not found"


# --- bad requests, auth, limits ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "ctx-0", "responses": ["item-0"]}, "user_id"),
        ({"user_id": "u", "prompt": "ctx-0", "responses": []}, "responses"),
        ({"user_id": "u", "prompt": "ctx-0", "responses": ["item-0"] * 65}, "responses"),
        ({"user_id": "u", "prompt": "ctx-0", "responses": ["item-0", "x" * 10_001]}, "responses.1"),
        ({"user_id": "u", "prompt": "x" * 10_001, "responses": ["item-0"]}, "prompt"),
        ({"user_id": "u", "responses": ["item-0"], "colour": "red"}, "colour"),
        ({"user_id": "u", "prompt": "ctx-0", "responses": ["item-0", "not-a-known-text"]}, "responses"),
        ({"user_id": "u", "prompt": "not-a-prompt", "responses": ["item-0"]}, "prompt"),
    ],
)
def test_score_bad_request_is_422_naming_the_field(serve, body, field):
    _, http = serve()
    out = http.post("/v1/score", json=body)
    assert out.status_code == 422, out.text
    payload = out.json()
    assert payload["error"] == "invalid request" and f"field '{field}'" in payload["detail"]
    assert "Traceback" not in out.text


def test_feedback_limits_and_bad_json(serve):
    _, http = serve()
    too_many = {"user_id": "u", "comparisons": comparisons(*[ROWS[0]] * 257)}
    out = http.post("/v1/feedback", headers=AUTH, json=too_many)
    assert out.status_code == 422 and "field 'comparisons'" in out.json()["detail"]
    missing = http.post(
        "/v1/feedback", headers=AUTH, json={"user_id": "u", "comparisons": [{"prompt": "ctx-0"}]}
    )
    assert missing.status_code == 422 and "comparisons.0.chosen" in missing.json()["detail"]
    unknown = http.post(
        "/v1/feedback",
        headers=AUTH,
        json={"user_id": "u", "comparisons": comparisons(("ctx-0", "zz", "item-1"))},
    )
    assert unknown.status_code == 422 and "comparisons.chosen" in unknown.json()["detail"]
    assert http.get("/v1/users/u").status_code == 404  # nothing stored by refused requests
    bad = http.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 422 and "field 'body'" in bad.json()["detail"]


def test_body_size_limit_is_413(serve):
    _, http = serve()
    big = {"user_id": "u", "prompt": "ctx-0", "responses": ["item-0"] * 120_000}
    out = http.post("/v1/score", json=big)
    assert out.status_code == 413 and out.json()["error"] == "payload too large"

    def chunks():  # no Content-Length: counted while reading
        for _ in range(20):
            yield b" " * 100_000

    streamed = http.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_write_endpoints_need_the_token(serve):
    _, http = serve()
    body = {"user_id": "u", "comparisons": comparisons(ROWS[0])}
    missing = http.post("/v1/feedback", json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"] == "unauthorized"
    wrong = http.post("/v1/feedback", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid token"
    assert http.delete("/v1/users/user-0").status_code == 401
    assert http.get("/v1/users/user-0").status_code == 200  # reads are open


def test_read_only_mode(serve, model_dir, tmp_path):
    with pytest.raises(PluralignError, match="without a token"):
        create_app(model_dir, tmp_path / "x.db")
    _, http = serve(token=None, read_only=True)
    out = http.post("/v1/feedback", headers=AUTH, json={"user_id": "u", "comparisons": comparisons(ROWS[0])})
    assert out.status_code == 403 and out.json()["error"] == "read-only"
    assert http.delete("/v1/users/user-0", headers=AUTH).status_code == 403
    assert http.post(
        "/v1/score", json={"user_id": "u", "prompt": "ctx-0", "responses": ["item-0"]}
    ).is_success
    assert http.get("/v1/health").json()["read_only"] is True


# --- micro-batching ---------------------------------------------------------------------------------------
def test_embedder_batches_concurrent_requests_and_isolates_failures(est):
    embedder = MicroBatchEmbedder(est.get_encoder(), max_wait=0.05, max_texts=1000)
    table = est.get_encoder()

    async def main():
        texts = [[f"item-{i}", f"item-{i + 100}"] for i in range(10)]
        results = await asyncio.gather(*(embedder.embed(t) for t in texts))
        for t, vectors in zip(texts, results, strict=True):
            np.testing.assert_array_equal(vectors, table.encode(t))
        assert embedder.stats.batches == 1 and embedder.stats.texts_encoded == 20
        again = await embedder.embed(["item-0", "item-100"])  # from memory: no new batch
        assert embedder.stats.batches == 1 and again.shape == (2, table.dim)
        good, bad = await asyncio.gather(
            embedder.embed(["item-200"]), embedder.embed(["missing-text"]), return_exceptions=True
        )
        np.testing.assert_array_equal(good, table.encode(["item-200"]))
        assert isinstance(bad, PluralignError)
        await embedder.aclose()

    asyncio.run(main())


# --- client and CLI ---------------------------------------------------------------------------------------
def test_client_round_trip_and_errors(serve):
    url, _ = serve()
    with PluralignClient(url, token=TOKEN) as client:
        assert client.health()["status"] == "ok"
        assert client.model_info()["n_prototypes"] == 2
        scored = client.score("frank", "ctx-0", ["item-0", "item-1"])
        assert scored["weights"] == "zero-shot" and len(scored["rewards"]) == 2
        fitted = client.feedback(
            "frank", [ROWS[0], {"prompt": "ctx-1", "chosen": "item-2", "rejected": "item-3"}]
        )
        assert fitted["n_comparisons"] == 2
        assert client.get_user("frank")["n_comparisons"] == 2
        assert client.next_question("frank", [("ctx-3", "item-6", "item-7")])["index"] == 0
        with pytest.raises(RequestError, match="field 'responses'") as info:
            client.score("frank", "ctx-0", [])
        assert info.value.status == 422
        assert client.delete_user("frank")["comparisons_deleted"] == 2
        with pytest.raises(NotFoundError, match="unknown user 'frank'"):
            client.get_user("frank")
    with PluralignClient(url) as anonymous, pytest.raises(AuthError, match="401") as info:
        anonymous.feedback("frank", [ROWS[0]])
    assert info.value.status == 401 and info.value.error == "unauthorized"
    with PluralignClient("http://127.0.0.1:9", timeout=2) as dead, pytest.raises(ServiceUnavailable):
        dead.health()


def test_cli_score_remote_and_serve_checks(serve, model_dir, tmp_path, monkeypatch):
    url, _ = serve()
    runner = CliRunner()
    args = ["score-remote", "--server", url, "--user", "user-1", "--prompt", "ctx-0"]
    result = runner.invoke(cli_app, [*args, "-r", "item-0", "-r", "item-1", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["rank"] for r in rows] == [1, 2] and rows[0]["reward"] >= rows[1]["reward"]
    table = runner.invoke(cli_app, [*args, "-r", "item-0"])
    assert table.exit_code == 0 and "item-0" in table.output and "known" in table.output
    bad = runner.invoke(cli_app, [*args, "-r", "no-such-text"])
    assert bad.exit_code == 2 and "no precomputed vector" in bad.output
    monkeypatch.delenv("PLURALIGN_TOKEN", raising=False)
    refused = runner.invoke(cli_app, ["serve", str(model_dir), "--state", str(tmp_path / "c.db")])
    assert refused.exit_code == 2 and "without a token" in refused.output
    empty = tmp_path / "token"
    empty.write_text("\n")
    refused = runner.invoke(cli_app, ["serve", str(model_dir), "--token-file", str(empty)])
    assert refused.exit_code == 2 and "is empty" in refused.output


def test_new_model_refits_stored_users(model_dir, tmp_path):
    state = tmp_path / "moved.db"
    with running(create_app(model_dir, state, token=TOKEN)) as url, httpx.Client(base_url=url) as http:
        old = http.post(
            "/v1/feedback", headers=AUTH, json={"user_id": "gina", "comparisons": comparisons(*ROWS)}
        ).json()
    other = make_demo_model(tmp_path / "other", seed=1)
    with running(create_app(other, state, token=TOKEN)) as url, httpx.Client(base_url=url) as http:
        user = http.get("/v1/users/gina").json()
    frame = pd.DataFrame(ROWS, columns=["prompt", "chosen", "rejected"]).assign(user_id="gina")
    direct = PALEstimator.load(other).adapt(frame)
    assert user["n_comparisons"] == 3 and user["weights"] != old["weights"]
    np.testing.assert_allclose(user["weights"], direct.loc["gina", ["w0", "w1"]], atol=1e-8)

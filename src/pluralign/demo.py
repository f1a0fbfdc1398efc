"""`make demo`: the main job end to end on embedded data, in a few minutes on a laptop-class CPU.

- ``persona`` (the default, PAL App. D.4): synthetic users with one of K* = 4 personas (interest in art,
  literature, math, music) say whether they would make a statement; the statements are real text, embedded
  with all-MiniLM-L6-v2 (cached). Trains BTL and PAL-B-Tiny, then onboards unseen users few-shot.
- ``synthetic`` (PAL Sec. 4.2 / App. D.2): d = 16, K* = 3, 100 users x 100 comparisons; BTL vs PAL-A with
  K = 1..4, then unseen users few-shot.

Each writes ``results.json`` (the schema of ``pluralign report``), the trained PAL model and, for Persona,
``user_groups.json`` (each user's persona), so ``pluralign report OUT`` draws the pictures.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pluralign.atomic import atomic_write_json
from pluralign.data.comparisons import PreferenceData
from pluralign.data.splits import split_per_user, take_per_user
from pluralign.datasets.persona import build_persona, embed_persona
from pluralign.datasets.synthetic import make_synthetic
from pluralign.estimator import BTL, PALA, PALB, PALEstimator
from pluralign.evaluation import few_shot_curve

#: the paper's linear projection f (App. D.2) with learning rates raised 10x so 300 epochs converge
SYNTHETIC_PARAMS = {
    "f_layers": 1,
    "bias": False,
    "epochs": 300,
    "batch_size": 512,
    "lr_maps": 5e-3,
    "lr_prototypes": 5e-2,
    "lr_users": 5e-2,
    "patience": None,
}
#: PAL-B-Tiny on MiniLM embeddings: 2-layer f and g_k, d = 16; large batches, lr raised to match them
PERSONA_PARAMS = {
    "dim": 16,
    "hidden": 128,
    "batch_size": 4096,
    "epochs": 8,
    "lr_maps": 3e-3,
    "lr_prototypes": 3e-3,
    "lr_users": 3e-2,
    "patience": None,
}


def _train_and_score(
    models: Sequence[tuple[str, PALEstimator]],
    train: PreferenceData,
    test: PreferenceData,
    new_users: PreferenceData,
    console: Console,
) -> list[dict]:
    rows = []
    for name, est in models:
        est.fit(train)
        rows.append(
            {
                "model": name,
                "train_acc": est.history_.records[-1]["train_accuracy"],
                "seen_test_acc": est.score(test),
                "new_users_zero_shot": est.score(new_users),
                "train_s": est.history_.seconds,
            }
        )
        console.print(f"  trained {name}: seen-user test accuracy {rows[-1]['seen_test_acc']:.3f}")
    return rows


def _print_results(
    rows: list[dict], curve: list[dict], title: str, curve_title: str, console: Console
) -> None:
    console.print(f"[bold]{title}[/]")
    table = Table()
    for col in ("model", "train acc", "seen test acc", "new users zero-shot", "train s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(
            r["model"],
            f"{r['train_acc']:.3f}",
            f"{r['seen_test_acc']:.3f}",
            f"{r['new_users_zero_shot']:.3f}",
            f"{r['train_s']:.1f}",
        )
    console.print(table)
    console.print(f"[bold]{curve_title}[/]")
    fs = Table()
    fs.add_column("n comparisons", justify="right")
    fs.add_column("new users test acc", justify="right")
    for r in curve:
        fs.add_row("0 (zero-shot)" if r["shots"] == 0 else str(r["shots"]), f"{r['accuracy']:.3f}")
    console.print(fs)


def _results(rows: list[dict], curve: list[dict], reference: float, label: str, seconds: float) -> dict:
    return {
        "table": rows,
        "few_shot": {
            "series": {
                label: {
                    "shots": [r["shots"] for r in curve],
                    "mean": [r["accuracy"] for r in curve],
                    "std": None,
                }
            },
            "reference": reference,
            "reference_label": "seen users",
        },
        "seconds": seconds,
    }


def run_persona_demo(
    out: Path,
    *,
    seed: int = 0,
    users_per_persona: int = 250,
    queries_per_user: int = 200,
    cache_dir: Path | None = None,
    console: Console | None = None,
) -> dict:
    """Persona (K* = 4) end to end: build, embed (cached), train BTL and PAL-B-Tiny, few-shot new users."""
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    dataset = build_persona(
        k_star=4,
        users_per_persona=users_per_persona,
        queries_per_user=queries_per_user,
        unseen_users_per_persona=50,
        unseen_queries_per_user=queries_per_user,
        seed=seed,
    )
    console.print(
        f"Persona K* = 4 ({', '.join(dataset.personas)}): {dataset.seen.n_users} users x {queries_per_user} "
        f"questions about {len(dataset.pool)} statements; embedding them with all-MiniLM-L6-v2"
    )
    dataset = embed_persona(dataset, cache_dir=cache_dir or out / "cache", show_progress=True)
    train, test = split_per_user(dataset.seen, (0.9, 0.1), seed=seed)
    adapt_pool, new_test = take_per_user(dataset.unseen, queries_per_user // 2, seed=seed)
    models = [
        ("BTL (homogeneous)", BTL(seed=seed, **{k: v for k, v in PERSONA_PARAMS.items() if k != "dim"})),
        ("PAL-B K=1", PALB(n_prototypes=1, seed=seed, **PERSONA_PARAMS)),
        ("PAL-B K=4", PALB(n_prototypes=4, seed=seed, **PERSONA_PARAMS)),
    ]
    rows = _train_and_score(models, train, test, new_test, console)
    best = models[-1][1]
    best.save(out / "model")
    groups = dict(
        zip(
            map(str, dataset.seen.user_ids),
            (dataset.personas[p] for p in dataset.seen_persona_of_user),
            strict=True,
        )
    )
    atomic_write_json(out / "user_groups.json", groups)
    curve = few_shot_curve(best, adapt_pool, new_test, (0, 1, 2, 5, 10, 20, 50), seed=seed).to_dict("records")
    _print_results(
        rows,
        curve,
        "Seen users, held-out questions (paper Fig. D.6: about 100% at K = K*)",
        "New users (PAL-B K=4): only their 4 weights fitted, exactly, on n answers",
        console,
    )
    result = _results(rows, curve, rows[-1]["seen_test_acc"], "PAL-B K=4", time.perf_counter() - start)
    atomic_write_json(out / "results.json", result)
    console.print(
        f"model in {out / 'model'}; `pluralign report {out}` draws the plots ({result['seconds']:.0f} s)"
    )
    return result


def run_synthetic_demo(out: Path, *, seed: int = 0, console: Console | None = None) -> dict:
    """The paper's synthetic experiment: BTL vs PAL-A with K = 1..4 (K* = 3), then new users few-shot."""
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = make_synthetic(
        model="pal_a",
        setting="mixture",
        dim=16,
        n_prototypes=3,
        n_users=100,
        n_train=100,
        n_test=50,
        n_unseen_users=50,
        n_unseen_per_user=100,
        seed=seed,
    )
    console.print(
        f"synthetic PAL-A mixture data: {data.train.n_users} users, {len(data.train)} training and "
        f"{len(data.test)} held-out comparisons, true K* = 3; {data.unseen.n_users} unseen users"
    )
    models = [("BTL (homogeneous)", BTL(seed=seed, **SYNTHETIC_PARAMS))]
    models += [
        (f"PAL-A K={k}", PALA(n_prototypes=k, dim=16, seed=seed, **SYNTHETIC_PARAMS)) for k in (1, 2, 3, 4)
    ]
    rows = _train_and_score(models, data.train, data.test, data.unseen_test, console)
    best = models[3][1]
    best.save(out / "model")
    curve = few_shot_curve(best, data.unseen, data.unseen_test, (0, 5, 10, 20, 40, 100), seed=seed)
    curve = curve.to_dict("records")
    _print_results(
        rows,
        curve,
        "Seen users, held-out accuracy (paper: K = K* beats K = 1 by ~7 points)",
        "New users (PAL-A K=3): only their weights fitted on n comparisons (paper: ~40 suffice)",
        console,
    )
    result = _results(rows, curve, rows[3]["seen_test_acc"], "PAL-A K=3", time.perf_counter() - start)
    atomic_write_json(out / "results.json", result)
    console.print(
        f"model in {out / 'model'}; `pluralign report {out}` draws the plots ({result['seconds']:.0f} s)"
    )
    return result

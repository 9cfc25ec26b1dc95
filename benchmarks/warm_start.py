"""The warm-start benchmark's inbox file: about 1% more interactions for a built-in dataset, landed as an
inbox partition of a project home (docs/lifecycle.md, "Warm-start retraining").

    MM_PIPELINE_HOME=H python benchmarks/warm_start.py --dataset builtin:default --fraction 0.01

The new interactions are *synthetic but plausible*: drawn from the generator's own latent model (the same
seed, so the same item latents and user tastes as the source), the way the generator draws a user's
history (utility plus Gumbel noise, top-k), excluding what each user already has. Nine in ten go to
existing users, after their last interaction; the rest make new users (fresh tastes, 3 to 8 interactions
each), so the retrain sees both known users with more history and users it has never seen.
The file is written to the home's inbox and ingested (one ``inbox_interactions`` partition in the
instance of ``$DAGSTER_HOME``), which is what ``new_interactions_sensor`` does before its run; the next
``mm-pipeline demo`` then retrains on it.
"""

from __future__ import annotations

import argparse
import hashlib

import numpy as np
import pandas as pd


def new_interactions(spec_name: str, fraction: float, seed: int = 0, draw_seed: int = 2026) -> pd.DataFrame:
    from mm_pipeline import settings
    from mm_pipeline.datasets import synthetic
    from mm_pipeline.datasets.sources import resolve_source

    kind, _, rest = spec_name.partition(":")
    if kind != "builtin":
        raise SystemExit("only builtin:<size>[:scenario] datasets: the draw uses the generator's latent model")
    size, _, scenario = (rest or "default").partition(":")
    spec = synthetic.spec_for(size, scenario or "video", seed=seed)
    source = resolve_source(spec_name, settings.project_paths().data, seed=seed).root
    old = pd.read_csv(source / "interactions.csv", dtype={"user_id": str, "item_id": str})
    rng = np.random.default_rng(spec.seed)  # the generator's draws, in its order: the same latents
    items = synthetic._item_latents(spec, rng)
    prefs = synthetic._user_preferences(spec, rng)
    draw = np.random.default_rng(draw_seed)
    total = max(1, round(fraction * len(old)))
    n_new_users_rows = total // 10
    cols = {k: items[k].to_numpy() for k in ("category", "style", "pattern", "rhythm")}
    w_c, w_s, w_p, w_r = spec.weights

    def utility(taste: dict[str, np.ndarray]) -> np.ndarray:
        return (
            w_c * taste["category"][cols["category"]]
            + w_s * taste["style"][cols["style"]]
            + w_p * taste["pattern"][cols["pattern"]]
            + w_r * taste["rhythm"][cols["rhythm"]]
            + items["popularity"].to_numpy()
        )

    def pick(taste: dict[str, np.ndarray], k: int, exclude: np.ndarray) -> np.ndarray:
        keys = utility(taste) / spec.temperature - np.log(-np.log(draw.random(spec.n_items) + 1e-12) + 1e-12)
        keys[exclude] = -np.inf
        return np.argsort(-keys)[:k]

    rows = []
    index = {f"i{i:06d}": i for i in range(spec.n_items)}
    by_user = old.groupby("user_id")
    last = by_user["timestamp"].max()
    users = draw.permutation(np.asarray(sorted(last.index)))
    remaining, position = total - n_new_users_rows, 0
    while remaining > 0:
        user = users[position % len(users)]
        position += 1
        u = int(user[1:])
        k = int(min(remaining, draw.integers(1, 4)))
        seen = by_user.get_group(user)["item_id"].map(index).to_numpy()
        taste = {name: prefs[name][u] for name in prefs}
        for j, item in enumerate(pick(taste, k, seen)):
            rows.append((user, f"i{item:06d}", int(last[user]) + 3600 * (j + 1) + int(draw.integers(60, 3600))))
        remaining -= k
    start = int(old["timestamp"].max())
    new_user = 0
    while n_new_users_rows > 0:
        k = int(min(n_new_users_rows, draw.integers(3, 9)))
        if n_new_users_rows - k < 3:
            k = n_new_users_rows
        cat = np.log(draw.dirichlet(np.full(spec.n_categories, 0.35)) + 1e-3)
        taste = {
            "category": (cat - cat.mean()) / (cat.std() + 1e-9),
            "style": draw.normal(size=spec.n_styles),
            "pattern": draw.normal(size=spec.n_patterns),
            "rhythm": draw.normal(size=spec.n_rhythms),
        }
        name = f"u9{new_user:05d}"
        for j, item in enumerate(pick(taste, k, np.zeros(0, dtype=np.int64))):
            rows.append((name, f"i{item:06d}", start + 4 * 3600 * (j + 1) + int(draw.integers(60, 3600))))
        n_new_users_rows -= k
        new_user += 1
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def land(path, dataset: str) -> str:
    """Ingest ``path`` as an ``inbox_interactions`` partition of the instance of ``$DAGSTER_HOME``."""
    import dagster as dg

    from mm_pipeline import cli, settings
    from mm_pipeline.defs.assets.inbox import INBOX_PARTITIONS_NAME, inbox_interactions
    from mm_pipeline.defs.build import all_assets, default_resources

    paths = settings.project_paths().ensure()
    cli.prepare_dagster_home(paths)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(INBOX_PARTITIONS_NAME, [digest])
        result = dg.materialize(
            [inbox_interactions, *all_assets()],
            selection=["inbox_interactions"],
            partition_key=digest,
            instance=instance,
            resources=default_resources(home=str(paths.home), dataset=dataset),
            run_config={"ops": {"inbox_interactions": {"config": {"file": str(path)}}}},
        )
        if not result.success:
            raise SystemExit("the inbox file was not ingested")
    return digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="builtin:default")
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--name", default="warm-start-1pct.csv")
    args = parser.parse_args()
    from mm_pipeline import settings
    from mm_pipeline.datasets.inbox import inbox_dir

    frame = new_interactions(args.dataset, args.fraction)
    folder = inbox_dir(settings.project_paths().home)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / args.name
    frame.to_csv(path, index=False)
    digest = land(path, args.dataset)
    print(
        f"{path}: {len(frame)} interactions ({frame['user_id'].str.startswith('u9').sum()} from "
        f"{frame.loc[frame['user_id'].str.startswith('u9'), 'user_id'].nunique()} new users), partition {digest[:12]}"
    )


if __name__ == "__main__":
    main()

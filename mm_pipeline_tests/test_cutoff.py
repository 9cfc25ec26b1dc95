"""Early cutoff on two small assets (no pipeline): when a step reuses its stored value and when it computes,
and what its materialization says."""

import shutil

import dagster as dg
import pandas as pd
import pytest

from mm_pipeline.defs.cutoff import REUSE_OFF, REUSE_TAG, can_reuse, is_reusing, with_early_cutoff
from mm_pipeline.defs.io_manager import BundleIOManager

CALLS: list[str] = []


class UpConfig(dg.Config):
    value: int = 1


class DownConfig(dg.Config):
    factor: int = 2


def make_assets(down_code_version: str = "1"):
    @dg.asset(code_version="1")
    def up(config: UpConfig) -> pd.DataFrame:
        CALLS.append("up")
        return pd.DataFrame({"x": [abs(config.value)] * 2})

    @dg.asset(code_version=down_code_version)
    def down(context: dg.AssetExecutionContext, config: DownConfig, up: pd.DataFrame) -> dg.Output[dict]:
        CALLS.append("down")
        return dg.Output({"total": int(up["x"].sum()) * config.factor}, metadata={"rows": len(up)})

    return with_early_cutoff([up, down])


@pytest.fixture
def store(tmp_path):
    instance = dg.DagsterInstance.ephemeral()

    def run(value=1, factor=2, code_version="1", tags=None):
        CALLS.clear()
        result = dg.materialize(
            make_assets(code_version),
            instance=instance,
            resources={"io_manager": BundleIOManager(base_dir=str(tmp_path / "assets"))},
            run_config={"ops": {"up": {"config": {"value": value}}, "down": {"config": {"factor": factor}}}},
            tags=tags,
        )
        assert result.success
        events = {e.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}
        return result, events

    run.base = tmp_path / "assets"
    yield run
    instance.dispose()


def test_a_step_reuses_its_value_when_nothing_it_depends_on_changed(store):
    result, first = store()
    assert CALLS == ["up", "down"] and first["down"].metadata["reused"].value is False
    assert first["down"].metadata["reuse"].value == "computed: no earlier materialization with its data provenance"

    # up runs again (its own config changed? no: it is recomputed into the same value) and down reuses.
    again, events = store()
    assert CALLS == [] and events["up"].metadata["reused"].value is True
    down = events["down"].metadata
    assert down["reused"].value is True and down["reused_from_run"].value == result.run_id
    assert down["rows"].value == 2  # the metadata of the materialization it reuses
    assert again.output_for_node("down") == {"total": 4}
    assert events["down"].tags["dagster/data_version"] == first["down"].tags["dagster/data_version"]


def test_a_parent_recomputed_into_the_same_value_stops_the_recomputation(store):
    _, first = store(value=1)
    # up's run config changed, so up computes again, into the same value (its absolute value): same data
    # version, and down reuses its own.
    _, events = store(value=-1)
    assert CALLS == ["up"] and events["up"].metadata["reuse"].value == "computed: its run config or resources changed"
    assert events["up"].tags["dagster/data_version"] == first["up"].tags["dagster/data_version"]
    assert events["down"].metadata["reused"].value is True
    _, events = store(value=3)
    assert CALLS == ["up", "down"]
    why = events["down"].metadata["reuse"].value
    assert why.startswith("computed: input changed: up (") and events["down"].metadata["reused"].value is False


def test_config_code_version_tag_and_a_missing_value_make_it_compute(store):
    store()
    _, events = store(factor=3)
    assert events["down"].metadata["reuse"].value == "computed: its run config or resources changed"
    _, events = store(factor=3, code_version="2")
    assert events["down"].metadata["reuse"].value == "computed: its code version changed (1 -> 2)"
    _, events = store(factor=3, code_version="2", tags={REUSE_TAG: REUSE_OFF})
    assert CALLS == ["up", "down"] and "reuse is off for this run" in events["down"].metadata["reuse"].value
    shutil.rmtree(store.base / "down" / "versions")  # the stored value is gone: computed again
    _, events = store(factor=3, code_version="2")
    assert CALLS == ["down"] and "cannot be loaded" in events["down"].metadata["reuse"].value


def test_only_plain_single_asset_functions_are_wrapped():
    @dg.multi_asset(outs={"a": dg.AssetOut(), "b": dg.AssetOut()})
    def two():
        yield dg.Output(1, output_name="a")
        yield dg.Output(2, output_name="b")

    @dg.asset
    def generated():
        yield dg.Output(1)

    wrapped = with_early_cutoff([*make_assets(), two, generated])
    assert [is_reusing(a) for a in wrapped] == [True, True, False, False]
    assert not can_reuse(wrapped[0])  # never twice

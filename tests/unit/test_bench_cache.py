"""The benchmark's cache of base models: one per kind, found by kind and parameters, kept across runs of other kinds."""

from __future__ import annotations

from pathlib import Path

from bookrec.bench import catalogue
from bookrec.model_store.store import ModelStore
from bookrec.worker.learn.artifacts import SERVING_GRAPH


def add_version(
    store: ModelStore, kind: str, asked: dict, params: dict | None = None, graph: int | None = SERVING_GRAPH
) -> str:
    """A stored version of `kind` trained with the parameters `asked`, which settled on `params` (default: those),
    exported with serving graphs of revision `graph` (None: a version older than the field)."""
    metadata = {"kind": kind, "params": params or asked, "params_asked": asked}
    with store.new_version(kind) as writer:
        (writer.path / "weights.bin").write_bytes(b"0")
        writer.finish(metadata if graph is None else {**metadata, "serving_graph": graph})
    return writer.version


def test_each_kind_finds_its_own_base_by_the_parameters_asked_for(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    mult_dae = add_version(store, *catalogue.model_params({}, "mult-dae"))
    add_version(store, *catalogue.model_params({"epochs": 2}, "mult-dae"))
    asked = catalogue.model_params({}, "ease")[1]
    ease = add_version(store, "ease", asked, {**asked, "l2": 400.0})  # ease chose l2 on validation

    assert catalogue.cached_base(store, *catalogue.model_params({})) == mult_dae
    assert catalogue.cached_base(store, *catalogue.model_params({}, "ease")) == ease
    assert catalogue.cached_base(store, *catalogue.model_params({"l2": 200.0}, "ease")) is None
    assert catalogue.cached_bases(store, but="mult-dae") == [ease]
    assert catalogue.cached_bases(store, but="ease") == [mult_dae]


def test_a_base_exported_by_older_serving_graphs_is_not_reused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    add_version(store, *catalogue.model_params({}), graph=None)  # before metadata recorded the graphs
    add_version(store, *catalogue.model_params({}), graph=SERVING_GRAPH - 1)

    assert catalogue.cached_base(store, *catalogue.model_params({})) is None
    current = add_version(store, *catalogue.model_params({}))
    assert catalogue.cached_base(store, *catalogue.model_params({})) == current

"""The benchmark's cache of base models: one per kind, found by kind and parameters, kept across runs of other kinds."""

from __future__ import annotations

from pathlib import Path

from bookrec.bench import catalogue
from bookrec.model_store.store import ModelStore


def add_version(store: ModelStore, kind: str, params: dict) -> str:
    """A stored version of `kind` whose metadata records `params`."""
    with store.new_version(kind) as writer:
        (writer.path / "weights.bin").write_bytes(b"0")
        writer.finish({"kind": kind, "params": params})
    return writer.version


def test_each_kind_finds_its_own_base_and_a_parameter_the_kind_chose_matches(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    mult_dae = add_version(store, *catalogue.model_params({}, "mult-dae"))
    ease_params = {**catalogue.model_params({}, "ease")[1], "l2": 400.0}  # ease chose l2 on validation
    ease = add_version(store, "ease", ease_params)

    assert catalogue.cached_base(store, *catalogue.model_params({})) == mult_dae
    assert catalogue.cached_base(store, *catalogue.model_params({}, "ease")) == ease
    assert catalogue.cached_base(store, *catalogue.model_params({"l2": 200.0}, "ease")) is None
    assert catalogue.cached_bases(store, but="mult-dae") == [ease]
    assert catalogue.cached_bases(store, but="ease") == [mult_dae]

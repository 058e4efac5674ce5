"""Job payload validation: what the producer and the worker both accept as user ids, lists and n."""

from __future__ import annotations

import pytest

from bookrec.shared import payloads
from bookrec.shared.errors import ValidationError


@pytest.mark.parametrize("value", [42, "42", 42.0, " 42 "])
def test_integer_and_string_forms_of_an_id_are_one_user(value: object) -> None:
    assert payloads.user_id(value) == "42"


def test_string_ids_that_are_not_numbers_are_kept() -> None:
    assert payloads.user_id("reader-7") == "reader-7"


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        None,
        [1],
        {"id": 1},
        float("nan"),
        float("inf"),
        1.5,
        "",
        "   ",
        "a*",
        "user?",
        "[ab]",
        "a b",
        "x\ny",
        "x" * 201,
    ],
    ids=repr,
)
def test_a_value_that_is_not_an_id_is_rejected_by_name(value: object) -> None:
    with pytest.raises(ValidationError) as raised:
        payloads.user_id(value)

    assert repr(value)[:40] in str(raised.value)


@pytest.mark.parametrize("n", [0, -1, 10**6, 101, 2.0, "10", True, None])
def test_n_outside_1_to_100_is_rejected(n: object) -> None:
    with pytest.raises(ValidationError, match="n must be a whole number from 1 to 100"):
        payloads.count_n(n)


@pytest.mark.parametrize("n", [1, 10, 100])
def test_n_in_range_is_accepted(n: int) -> None:
    assert payloads.count_n(n) == n


def test_user_list_is_canonicalised_in_order() -> None:
    assert payloads.user_list([3, "1", 2.0]) == ["3", "1", "2"]


def test_empty_user_list_is_rejected() -> None:
    with pytest.raises(ValidationError, match="empty"):
        payloads.user_list([])


@pytest.mark.parametrize("values", ["1,2,3", b"12", 7, {"users": [1]}, None])
def test_user_list_must_be_a_list(values: object) -> None:
    with pytest.raises(ValidationError, match="must be a list"):
        payloads.user_list(values)


def test_one_job_holds_at_most_1000_users() -> None:
    assert len(payloads.user_list(list(range(1000)))) == 1000

    with pytest.raises(ValidationError, match="1001 user ids in one job; at most 1000"):
        payloads.user_list(list(range(1001)))


def test_user_list_names_the_first_bad_id() -> None:
    with pytest.raises(ValidationError, match="'a\\*b'"):
        payloads.user_list([1, "a*b", None])


def test_split_valid_keeps_good_ids_and_reports_each_bad_one() -> None:
    good, bad = payloads.split_valid([1, None, "7", [2], float("nan")])

    assert good == ["1", "7"]
    assert [b["user_id"] for b in bad] == ["None", "[2]", "nan"]
    assert all("not an integer or a string" in b["error"] for b in bad)


def test_the_kinds_clients_may_name_are_exactly_the_kinds_workers_train() -> None:
    from bookrec.shared.payloads import DEFAULT_MODEL_KIND, MODEL_KINDS
    from bookrec.worker.learn.models import DEFAULT_KIND, KINDS

    assert set(MODEL_KINDS) == set(KINDS)
    assert DEFAULT_MODEL_KIND == DEFAULT_KIND


def test_the_hyper_parameter_rules_cover_exactly_each_kinds_defaults_and_accept_them() -> None:
    from bookrec.worker.learn.models import KINDS

    assert set(payloads.PARAMS) == set(KINDS) == set(payloads.MODEL_KINDS)
    for kind, spec in KINDS.items():
        assert set(payloads.PARAMS[kind]) == set(spec.defaults), kind
        assert payloads.hyper_params(spec.defaults, kind) == spec.defaults, kind


@pytest.mark.parametrize(
    ("kind", "params", "problem"),
    [
        ("mult-dae", {"dropout": 1.0}, "mult-dae hyper-parameter dropout must be a number from 0 to 0.95, got 1.0"),
        ("biased-mf", {"l2": -0.1}, "biased-mf hyper-parameter l2 must be a number from 0 to 1, got -0.1"),
        ("deep", {"patience": True}, "deep hyper-parameter patience must be a whole number from 0 to 50, got True"),
        ("mf", {"dim": 8.0}, "mf hyper-parameter dim must be a whole number from 1 to 4096, got 8.0"),
        ("mf", {"steps": 10, "dropout": 0.1}, "unknown mf hyper-parameter(s) dropout, steps; mf takes: dim, epochs,"),
    ],
)
def test_a_hyper_parameter_of_the_wrong_type_range_or_kind_is_refused_by_name(
    kind: str, params: dict, problem: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        payloads.hyper_params(params, kind)

    assert str(refused.value).startswith(problem)


def test_null_hyper_parameters_mean_the_defaults() -> None:
    assert payloads.hyper_params(None, "mf") == {}
    assert payloads.hyper_params({"dim": None, "epochs": 3}, "mf") == {"dim": None, "epochs": 3}


def test_a_hyper_parameter_message_quotes_a_huge_key_or_value_only_in_part() -> None:
    huge = "x" * 100_000
    for params in ({huge: 1}, {"dim": huge}, {f"k{i}": 1 for i in range(1000)}):
        with pytest.raises(ValidationError) as refused:
            payloads.hyper_params(params, "mf")
        assert len(str(refused.value)) < 600, str(refused.value)[:200]

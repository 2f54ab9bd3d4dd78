"""Tags: the naming rule, lower-casing with a notice, and generated versions."""

from __future__ import annotations

import itertools
import logging
import re

import pytest

from tiffin.exceptions import InvalidArgument, InvalidTag, TiffinError
from tiffin.tag import Tag, is_valid_part, new_version

RULE_WORDS = "lowercase letters, digits"


@pytest.mark.parametrize(
    "text",
    ["iris", "a", "9", "my-model_v2.1", "a" * 63, "0.1.0", "x-y", "iris:v1", "iris:0.1.0"],
)
def test_valid_tags_round_trip(text: str) -> None:
    tag = Tag.from_str(text)
    assert str(tag) == text
    assert Tag.from_str(str(tag)) == tag


@pytest.mark.parametrize(
    "text",
    [
        "a" * 64,  # one too long
        "-iris",  # must start with a letter or digit
        "iris-",  # ... and end with one
        ".iris",
        "iris_",
        "my model",
        "iris/v1",
        "../etc",
        "iris\n",  # a trailing newline must not slip through a '$' anchor
        "\u212aey",  # Kelvin sign: str.lower() would turn it into an ASCII 'k'
        "caf\u00e9",
        "",
    ],
)
def test_invalid_names_are_refused_naming_the_rule(text: str) -> None:
    with pytest.raises(InvalidTag) as info:
        Tag(text)
    message = str(info.value)
    assert RULE_WORDS in message or "expected" in message
    assert "63 characters" in message


@pytest.mark.parametrize("version", ["a" * 64, "-v1", "v1-", "v 1", "v1\n", "V\u00c9"])
def test_invalid_versions_are_refused(version: str) -> None:
    with pytest.raises(InvalidTag, match="invalid version"):
        Tag("iris", version)


@pytest.mark.parametrize("text", ["", "iris:", "iris:v1:v2", ":v1", "iris:-x"])
def test_malformed_tag_strings(text: str) -> None:
    with pytest.raises(InvalidTag):
        Tag.from_str(text)


def test_invalid_tag_is_a_bad_argument_with_exit_code_2() -> None:
    assert issubclass(InvalidTag, InvalidArgument)
    assert issubclass(InvalidTag, TiffinError)
    assert InvalidTag.exit_code == 2
    assert InvalidTag.http_status == 400


def test_non_string_parts_are_refused() -> None:
    with pytest.raises(InvalidTag, match="must be a string"):
        Tag(123)  # type: ignore[arg-type]
    with pytest.raises(InvalidTag):
        Tag.from_str(None)  # type: ignore[arg-type]


def test_mixed_case_is_lower_cased_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tiffin.tag"):
        tag = Tag.from_str("Iris:V1")
    assert tag == Tag("iris", "v1")
    assert str(tag) == "iris:v1"
    notices = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'Iris'" in n and "'iris'" in n for n in notices)
    assert any("'V1'" in n and "'v1'" in n for n in notices)


def test_lowercase_input_gives_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tiffin.tag"):
        Tag.from_str("iris:v1")
    assert caplog.records == []


def test_latest_and_bare_name() -> None:
    assert Tag.from_str("iris").version is None
    assert Tag.from_str("iris").is_latest
    assert Tag.from_str("iris:latest").is_latest
    assert not Tag.from_str("iris:v1").is_latest
    assert Tag.from_taglike(Tag("iris", "v1")) == Tag("iris", "v1")
    assert repr(Tag("iris", "v1")) == "Tag('iris:v1')"


def test_tags_are_frozen_and_hashable() -> None:
    tag = Tag("iris", "v1")
    with pytest.raises(AttributeError):
        tag.name = "other"  # type: ignore[misc]
    assert {tag, Tag.from_str("iris:v1")} == {tag}


def test_is_valid_part_is_exact() -> None:
    assert is_valid_part("iris")
    assert not is_valid_part("Iris")  # valid only after lower-casing
    assert not is_valid_part("iris\n")
    assert not is_valid_part("")


def test_generated_versions_shape() -> None:
    version = new_version()
    assert re.fullmatch(r"[0-9a-z]{16}", version)
    assert Tag("iris", version).version == version
    tag = Tag("iris").with_new_version()
    assert tag.name == "iris" and tag.version and len(tag.version) == 16


def test_generated_versions_are_unique_and_strictly_increasing() -> None:
    versions = [new_version() for _ in range(5000)]
    assert len(set(versions)) == len(versions)
    assert all(a < b for a, b in itertools.pairwise(versions))

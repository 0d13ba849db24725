"""The format registry and the stop strings a format hands the engine (R10)."""

from __future__ import annotations

import pytest

from prompt_formats import (
    AiroborosFormat,
    PromptFormat,
    PromptFormatError,
    format_names,
    get_format,
    register_format,
    unregister_format,
)


def test_default_format_is_airoboros():
    fmt = get_format()
    assert fmt.name == "airoboros"
    assert isinstance(fmt, PromptFormat)
    assert fmt.stop_strings == ("</s>", "USER:")


def test_unknown_format_is_a_key_error_naming_the_known_ones():
    with pytest.raises(KeyError) as caught:
        get_format("llama-3")
    assert "'llama-3'" in str(caught.value) and "airoboros, chatml" in str(caught.value)


def test_registered_format_is_found_by_name():
    class Terse(AiroborosFormat):
        name = "terse-test"

    fmt = Terse(default_system="Be terse.")
    register_format(fmt)
    try:
        assert get_format("terse-test") is fmt
        assert "terse-test" in format_names()
        assert fmt.render([{"role": "user", "content": "Hi"}]) == "Be terse. USER: Hi ASSISTANT: "
    finally:
        unregister_format("terse-test")


def test_registering_a_taken_name_needs_replace():
    other = AiroborosFormat(default_system="Other.")
    with pytest.raises(ValueError):
        register_format(other)
    original = get_format("airoboros")
    register_format(other, replace=True)
    try:
        assert get_format("airoboros") is other
    finally:
        register_format(original, replace=True)


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        (None, ["</s>", "USER:"]),
        ("###", ["</s>", "USER:", "###"]),
        (["\n\n", "USER:", "###", "\n\n"], ["</s>", "USER:", "\n\n", "###"]),
        (["</s>"], ["</s>", "USER:"]),
        ([], ["</s>", "USER:"]),
        ("", ["</s>", "USER:"]),
    ],
    ids=["none", "string", "list-with-duplicates", "only-defaults", "empty-list", "empty-string"],
)
def test_stops_unite_format_and_client_stops_in_order(client, expected):
    assert get_format().stops(client) == expected


@pytest.mark.parametrize("client", [["ok", 3], 3])
def test_non_string_stop_is_a_client_error(client):
    with pytest.raises(PromptFormatError) as caught:
        get_format().stops(client)
    assert (caught.value.code, caught.value.param) == ("invalid_stop", "stop")

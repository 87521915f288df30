"""observer.toml loading: substitution, validation, and the messages users see."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from observer_core.config import ConfigError, load_config, parse_toml
from observer_core.plugins import load_registry


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def load(tmp_path: Path, registry, text: str, env: dict[str, str] | None = None):
    path = tmp_path / "observer.toml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, registry, env or {})


def error_of(tmp_path: Path, registry, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, registry, text, env)
    message = str(caught.value)
    assert "\n" not in message
    return message


class TestSubstitution:
    def test_set_variable_replaces_raw_text_so_numbers_work(self, tmp_path, registry):
        config = load(
            tmp_path,
            registry,
            """
            [sources.http]
            port = ${PORT}
            """,
            {"PORT": "4100"},
        )
        assert config.instances[0].config.port == 4100

    @pytest.mark.parametrize("env", [{}, {"PORT": ""}])
    def test_default_applies_when_unset_or_empty(self, tmp_path, registry, env):
        config = load(tmp_path, registry, "[sources.http]\nport = ${PORT:-4200}\n", env)
        assert config.instances[0].config.port == 4200

    def test_unset_variable_without_default_names_it(self, tmp_path, registry):
        message = error_of(tmp_path, registry, "[sources.http]\nport = ${NO_SUCH_PORT}\n")
        assert "NO_SUCH_PORT" in message
        assert "observer.toml: line 2" in message

    def test_double_dollar_writes_a_literal(self):
        assert parse_toml('a = "$${HOME}"\n', {"HOME": "/root"}) == {"a": "${HOME}"}

    def test_comments_are_not_substituted(self):
        text = "a = 1 # ${UNSET_IN_COMMENT}\n# ${ALSO_UNSET}\n"
        assert parse_toml(text, {}) == {"a": 1}

    def test_hash_inside_a_string_is_not_a_comment(self):
        assert parse_toml('a = "x#${V}"\n', {"V": "1"}) == {"a": "x#1"}

    def test_multiline_strings_are_substituted_but_not_their_hashes(self):
        text = 'a = """\n# ${V}\n"""\n'
        assert parse_toml(text, {"V": "z"}) == {"a": "# z\n"}


HOSTILE = 'x"\nplugin = "console"\n[sinks.evil]\nplugin = "console'
"""A value that, pasted into the TOML text, closed the string and added keys and a table."""


class TestSubstitutionIsAValueNeverSyntax:
    """Contract §11.7: ``${VAR}`` fills in a value; it never adds a key or a table."""

    @pytest.mark.parametrize(
        "value",
        [HOSTILE, "ab\\tcd", 'quote " and \\" escaped', "line\nbreak\r\n", "tab\there", "\\", "'"],
    )
    @pytest.mark.parametrize("quote", ['"', "'", '"""', "'''"])
    def test_a_quoted_variable_arrives_exactly_as_in_the_environment(
        self, tmp_path, registry, value, quote
    ):
        config = load(
            tmp_path,
            registry,
            f"""
            [sinks.ops]
            plugin = "jsonl"
            path = {quote}${{OPS_PATH}}{quote}
            """,
            {"OPS_PATH": value},
        )
        [sink] = config.instances
        assert sink.config.path == value
        assert sink.plugin.name == "jsonl"

    def test_a_hostile_value_adds_no_key_or_table(self, tmp_path, registry):
        config = load(
            tmp_path,
            registry,
            """
            [sinks.ops]
            plugin = "jsonl"
            path = "out/${NAME}.jsonl"
            """,
            {"NAME": HOSTILE},
        )
        assert [item.qualified for item in config.instances] == ["sinks.ops"]
        assert config.instances[0].config.path == f"out/{HOSTILE}.jsonl"

    def test_the_default_is_taken_as_written(self, tmp_path, registry):
        config = load(tmp_path, registry, '[sinks.ops]\nplugin = "jsonl"\npath = "${P:-a\\tb}"\n')
        assert config.instances[0].config.path == "a\\tb"

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("4100", 4100), (" 4100\n", 4100), ("0x10", 16), ("1_000", 1000)],
    )
    def test_a_bare_variable_reads_as_one_integer(self, tmp_path, registry, value, expected):
        config = load(tmp_path, registry, "[sources.http]\nport = ${PORT}\n", {"PORT": value})
        assert config.instances[0].config.port == expected

    @pytest.mark.parametrize(
        ("value", "expected"), [("true", True), ("false", False), ("1.5", 1.5), ("-2", -2)]
    )
    def test_a_bare_variable_reads_as_one_boolean_or_float(self, value, expected):
        assert parse_toml("x = ${X}\n", {"X": value}) == {"x": expected}

    @pytest.mark.parametrize(
        "value",
        [
            "abc",
            "3800\nhost = '0.0.0.0'",
            "3800 # comment",
            "[1, 2]",
            "{a = 1}",
            '"3800"',
            "1979-05-27",
            "",
            "1 2",
        ],
    )
    def test_anything_else_bare_is_an_error_naming_the_variable_and_key(
        self, tmp_path, registry, value
    ):
        message = error_of(tmp_path, registry, "[sources.http]\nport = ${PORT}\n", {"PORT": value})
        assert message == (
            "observer.toml: line 2: [sources.http] port: ${PORT} must be one integer, "
            'float or boolean here (write "${PORT}" for a string)'
        )

    def test_a_bare_default_must_be_a_scalar_too(self, tmp_path, registry):
        message = error_of(tmp_path, registry, "[observer]\ncycle_secs = ${C:-soon}\n")
        assert "line 2: [observer] cycle_secs: ${C} must be one integer" in message

    def test_a_bare_variable_glued_to_other_text_is_an_error(self, tmp_path, registry):
        message = error_of(tmp_path, registry, "[sources.http]\nport = 38${P}\n", {"P": "00"})
        assert message == (
            'observer.toml: line 2: ${P} must be a whole value (write "...${P}..." '
            "to put it in a string)"
        )

    @pytest.mark.parametrize(
        "text", ['"${K}" = 1\n', "[sinks.${K}]\n", '[sinks."${K}"]\n', "${K} = 1\n"]
    )
    def test_a_variable_cannot_name_a_key_or_table(self, text):
        with pytest.raises(ConfigError, match=r"^c.toml: line 1: \$\{K\} "):
            parse_toml(text, {"K": "console"}, "c.toml")

    def test_a_bare_variable_in_an_array_fills_one_element(self):
        assert parse_toml("x = [${A}, 2]\n", {"A": "1"}) == {"x": [1, 2]}
        with pytest.raises(ConfigError, match="must be one integer"):
            parse_toml("x = [${A}]\n", {"A": "1, 2"})

    def test_errors_keep_their_line_numbers(self, tmp_path, registry):
        text = '[observer]\nring_size = 5\n\n[sinks.ops]\nplugin = "jsonl"\npath = "${P}" x\n'
        assert "line 6" in error_of(tmp_path, registry, text, {"P": "a\nb\nc"})

    def test_placeholders_never_leak_into_values(self):
        document = parse_toml("a = \"${A}${B}\"\nb = '${A}'\n", {"A": "1", "B": "2"})
        assert document == {"a": "12", "b": "1"}


class TestValidation:
    def test_defaults_fill_everything(self, tmp_path, registry):
        config = load(tmp_path, registry, "")
        assert config.settings.cycle_secs == 30
        assert config.settings.ring_size == 2000
        assert config.settings.max_field_bytes == 65536
        assert config.settings.shutdown_timeout_secs == 10
        assert config.state_dir == tmp_path.resolve() / "data/_observer/state"

    def test_unknown_key_names_file_table_and_key(self, tmp_path, registry):
        message = error_of(tmp_path, registry, "[sources.http]\nprot = 1\n")
        assert message.startswith("observer.toml: [sources.http] prot: unknown key")
        assert "port" in message  # lists the known keys

    def test_wrong_type(self, tmp_path, registry):
        message = error_of(tmp_path, registry, '[sources.http]\nport = "80"\n')
        assert message.startswith("observer.toml: [sources.http] port: Expected `int`, got `str`")

    def test_missing_required_key(self, tmp_path, registry):
        message = error_of(tmp_path, registry, '[sinks.ops]\nplugin = "jsonl"\n')
        assert message == "observer.toml: [sinks.ops] path: required key is missing"

    def test_unknown_plugin_lists_installed(self, tmp_path, registry):
        message = error_of(tmp_path, registry, '[sinks.x]\nplugin = "kafka"\n')
        assert "unknown sink plugin 'kafka'" in message
        assert "jsonl" in message and "console" in message

    def test_plugin_defaults_to_instance_name(self, tmp_path, registry):
        config = load(tmp_path, registry, "[sinks.console]\n")
        assert config.instances[0].plugin.name == "console"

    def test_unknown_observer_key(self, tmp_path, registry):
        message = error_of(tmp_path, registry, "[observer]\ncycle = 3\n")
        assert message.startswith("observer.toml: [observer] cycle: unknown key")

    def test_unknown_top_level_table(self, tmp_path, registry):
        assert "[source]: unknown table" in error_of(tmp_path, registry, "[source.http]\n")

    def test_invalid_toml_reports_the_line(self, tmp_path, registry):
        assert "line 2" in error_of(tmp_path, registry, "[observer]\ncycle_secs = = 3\n")

    def test_unknown_record_kind_in_accepts(self, tmp_path, registry):
        message = error_of(tmp_path, registry, '[sinks.c]\nplugin = "console"\naccepts = ["opz"]\n')
        assert "accepts: unknown record kind 'opz'" in message

    def test_enabled_must_be_boolean(self, tmp_path, registry):
        assert "enabled" in error_of(tmp_path, registry, '[sinks.console]\nenabled = "no"\n')

    @pytest.mark.parametrize(
        "text",
        [
            "[observer]\ncycle_secs = 0\n",
            "[observer]\nring_size = 0\n",
            "[observer]\ncycle_secs = true\n",
        ],
    )
    def test_out_of_range_settings(self, tmp_path, registry, text):
        assert error_of(tmp_path, registry, text).startswith("observer.toml: [observer]")

    def test_instances_keep_file_order(self, tmp_path, registry):
        config = load(
            tmp_path,
            registry,
            """
            [sinks.b]
            plugin = "console"
            [sinks.a]
            plugin = "console"
            """,
        )
        assert [item.name for item in config.instances] == ["b", "a"]

    def test_missing_file_suggests_init(self, tmp_path, registry):
        with pytest.raises(ConfigError, match="observer-core init"):
            load_config(tmp_path / "nope.toml", registry, {})


def test_resolved_masks_secrets(tmp_path, registry):
    config = load(tmp_path, registry, '[sources.http]\ntoken = "s3cret"\n')
    text = config.to_toml()
    assert "s3cret" not in text
    assert 'token = "********"' in text
    assert "max_body_bytes = 1048576" in text


def test_warns_when_a_finding_kind_reaches_no_sink(tmp_path, registry):
    from observer_core.components import Analyzer, AnalyzerConfig
    from observer_core.config import InstanceConfig
    from observer_core.plugins import LOCAL, PluginInfo

    class Emitter(Analyzer):
        name = "emitter"
        emits = ("diagnosis",)

    config = load(tmp_path, registry, '[sinks.console]\naccepts = ["op"]\n')
    config.instances.append(
        InstanceConfig(
            "analyzers",
            "e",
            PluginInfo("analyzers", "emitter", Emitter, LOCAL),
            True,
            AnalyzerConfig(),
        )
    )
    [warning] = config.warnings(registry)
    assert "[analyzers.e] emits 'diagnosis'" in warning


def test_resolved_drops_nested_unset_values_and_masks_nested_secrets():
    from observer_core.config import _resolved
    from observer_core.redact import redact_config

    table = {"fleet": {"url": "nats://x", "token": "s3cret", "name": None}, "keys": [1, None]}
    assert _resolved(redact_config(table)) == {
        "fleet": {"url": "nats://x", "token": "********"},
        "keys": [1],
    }
    assert _resolved(table)["fleet"]["token"] == "s3cret"

"""``observer-core test`` (ANALYSIS §14.2), run as a real subprocess on real files."""

from __future__ import annotations

import json
import textwrap

import pytest

CONFIG = """
[observer]
cycle_secs = 30
state_dir = "state"

[sinks.rows]
plugin = "jsonl"
path = "rows.jsonl"
accepts = ["escalation"]

[analyzers.escalation]
threshold = 3

[analyzers.diagnosis]
"""

ESCALATED_ONCE = """
[[tests]]
name = "a repeated timeout is escalated once"
analyzers = ["escalation"]
config = "observer.toml"
cycles = 3

  [[tests.ops]]
  success = false
  sig_hash = "a1"
  error = "timeout"
  repeat = {repeat}

  [tests.replies.escalation]
  body = {{ run_id = "r-1" }}

  [[tests.expect]]
  kind = "escalation"
  match = {{ sig_hash = "a1", cluster_size = 3 }}
  count = 1

  [[tests.expect_none]]
  kind = "diagnosis"
"""


def run_tests(factory, text: str, name: str = "tests.toml"):
    factory.write_config(CONFIG)
    (factory.directory / name).write_text(textwrap.dedent(text))
    return factory.run("test", name)


def test_a_passing_test_exits_0_and_touches_nothing(observer_daemon):
    result = run_tests(observer_daemon, ESCALATED_ONCE.format(repeat=3))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "PASS a repeated timeout is escalated once",
        "1 passed, 0 failed",
    ]
    assert not (observer_daemon.directory / "state").exists()
    assert not (observer_daemon.directory / "rows.jsonl").exists()


def test_a_failing_test_shows_expected_beside_actual_and_exits_1(observer_daemon):
    result = run_tests(observer_daemon, ESCALATED_ONCE.format(repeat=4))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "FAIL a repeated timeout is escalated once"
    assert (
        '  expect[0]: escalation findings matching {"sig_hash":"a1","cluster_size":3}: '
        "expected 1, got 0" in lines
    )
    header = next(line for line in lines if "expected" in line and "actual" in line)
    assert "key" in header and "the closest escalation finding" in header
    assert any(line.split() == ["sig_hash", '"a1"', '"a1"'] for line in lines)
    assert any(line.split() == ["✗", "cluster_size", "3", "4"] for line in lines)
    assert "  findings emitted (1):" in lines
    assert lines[-1] == "0 passed, 1 failed"


def test_a_call_without_a_canned_reply_fails_naming_the_instance(observer_daemon):
    text = """
    [[tests]]
    name = "diagnosis asks the model"
    analyzers = ["diagnosis"]
    config = "observer.toml"
      [[tests.ops]]
      success = false
      error = "boom"
    """
    result = run_tests(observer_daemon, text)
    assert result.returncode == 1
    assert "FAIL diagnosis asks the model" in result.stdout
    assert (
        "analyzers.diagnosis called POST http://localhost:3100/ai/generate, but the test has "
        "no canned reply for it (add [tests.replies.diagnosis])" in result.stdout
    )


def test_replies_in_order_and_ops_from_a_file(observer_daemon):
    ops = [
        {
            "timestamp": f"2026-05-01T00:00:{second:02d}.000Z",
            "endpoint": "/fill",
            "input_summary": "fill",
            "success": False,
            "duration_ms": 5,
            "output_summary": "failed",
            "source": "scenario",
            "sig_hash": "z9",
        }
        for second in (0, 1, 2)
    ]
    (observer_daemon.directory / "data").mkdir()
    (observer_daemon.directory / "data" / "ops.jsonl").write_text(
        "".join(json.dumps(op) + "\n" for op in ops)
    )
    text = """
    [[tests]]
    name = "retried after a 503"
    analyzers = ["escalation"]
    config = "../observer.toml"
    ops_file = "ops.jsonl"
    cycles = 2
      [[tests.replies.escalation]]
      status = 503
      [[tests.replies.escalation]]
      body = { run_id = "second" }
      [[tests.expect]]
      kind = "escalation"
      cycle = 2
      [tests.expect.match]
      llm_team_run_id = "second"
      cluster_endpoint = "/fill"
      ts = "2026-05-01T00:01:00.000Z"
    """
    result = run_tests(observer_daemon, text, name="data/tests.toml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[[tests]]\nname = 'x'\n[[tests.expect]]\nkind = 'a'\ncont = 1\n",
            "test 'x': expect[0].cont: unknown key",
        ),
        ("[[tests]]\nanalyzers = []\n", "tests[0]: name: required key is missing"),
        (
            "[[tests]]\nname = 'x'\nanalyzers = ['nope']\n",
            "test 'x': analyzers: observer.toml: no analyzer named 'nope'",
        ),
        (
            "[[tests]]\nname = 'x'\n[[tests.ops]]\nduration_ms = -1\n",
            "test 'x': ops[0].duration_ms: Expected `int` >= 0",
        ),
        (
            "[[tests]]\nname = 'x'\n[tests.replies.playbook]\n",
            "test 'x': replies.playbook: not an analyzer of this test",
        ),
        ("[[tests\n", "tests.toml: invalid TOML"),
    ],
)
def test_a_file_that_does_not_parse_exits_2_naming_file_test_and_key(
    observer_daemon, text, message
):
    result = run_tests(observer_daemon, text)
    assert result.returncode == 2
    assert result.stdout.startswith("observer-core: tests.toml: ")
    assert message in result.stdout
    assert "PASS" not in result.stdout and "Traceback" not in result.stderr


def test_an_analyzer_that_cannot_start_fails_its_test(observer_daemon):
    observer_daemon.write_config(
        '[analyzers.llm]\nplugin = "diagnosis"\napi_key_env = "NO_SUCH_KEY_SET"\n'
    )
    (observer_daemon.directory / "tests.toml").write_text('[[tests]]\nname = "starts"\n')
    result = observer_daemon.run("test", "tests.toml")
    assert result.returncode == 1
    assert result.stdout.splitlines()[:2] == [
        "FAIL starts",
        "  [analyzers.llm] cannot start: api_key_env: the environment variable NO_SUCH_KEY_SET "
        "is not set (it should hold the API key)",
    ]

"""The command line's surface: the README's command summary says what --help says, every flag has
help, errors share one prefix, --seeds takes a count or a list, and --baseline is the one name for
the schedule the others race to."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from multidiff.cli import ACCELERATORS, build_parser, main, parse_seeds
from multidiff.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    out.update(_subparsers(sub, f"{prefix}{name} "))
                else:
                    out[f"{prefix}{name}"] = sub
    return out


COMMANDS = _subparsers(build_parser())


def _visible_actions(sub: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in sub._actions if a.option_strings and a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]


def _readme_summary() -> dict[str, str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Command line", 1)[1].split("```", 2)[1]
    commands: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        match = re.match(r"multidiff ((?:schedule )?\w+)", line)
        if match:
            current = match.group(1)
            commands[current] = line
        elif current and line.startswith(" "):
            commands[current] += " " + line.strip()
    return commands


def test_the_readme_summary_names_every_command_and_flag_that_help_does():
    summary = _readme_summary()
    assert set(summary) == set(COMMANDS)
    for name, sub in COMMANDS.items():
        said = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-o)(?![\w-])", summary[name]))
        actions = _visible_actions(sub)
        assert all(said & set(a.option_strings) for a in actions), (name, [a.option_strings for a in actions if not said & set(a.option_strings)])
        assert said <= {s for a in actions for s in a.option_strings}, (name, said)


def test_the_readme_summary_lists_each_flags_choices_as_help_does():
    summary = _readme_summary()
    for name, sub in COMMANDS.items():
        for action in sub._actions:
            if action.choices and action.option_strings and action.help != argparse.SUPPRESS and len(action.choices) <= 6:
                flag = action.option_strings[-1]
                listed = re.search(re.escape(flag) + r" ([\w|-]+)", summary[name])
                assert listed and listed.group(1).split("|") == list(action.choices), (name, flag)


def test_every_flag_has_help_and_help_states_defaults():
    for name, sub in COMMANDS.items():
        for action in sub._actions:
            assert action.help, f"multidiff {name}: {action.option_strings or action.dest} has no help"
    text = COMMANDS["schedule sigmas"].format_help()
    assert "(default: 32)" in text and "(default: 7.0)" in text and "(default: None)" not in text
    assert "(default: None)" not in COMMANDS["train"].format_help()
    assert list(COMMANDS["train"]._option_string_actions["--accelerator"].choices) == ACCELERATORS


@pytest.mark.parametrize("argv", [["train"], ["compare", "r.yaml"], ["schedule", "sigmas", "f.json", "--format", "nope"], ["nosuch"]])
def test_argparse_errors_share_the_prefix_of_every_other_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("multidiff: error: "), err


def test_seeds_take_a_count_or_a_list():
    assert parse_seeds("3", 5) == [5, 6, 7]
    assert parse_seeds("0,1,2", 5) == [0, 1, 2]
    assert parse_seeds(" 4, 2", 0) == [4, 2]
    for bad, message in (("0", "count between 1"), ("101", "count between 1"), ("1,1", "twice"), ("a,b", "a count (3) or"),
                         ("-1", "a count (3) or"), ("1,2000000000", "above"), ("", "a count (3) or")):  # fmt: skip
        with pytest.raises(UserError, match=re.escape(message)):
            parse_seeds(bad, 0)


def test_compare_to_is_the_old_name_of_baseline(tmp_path, capsys):
    args = ["train", str(REPO / "recipes" / "binary_digits.yaml"), "--print-recipe"]
    assert main(args + ["--baseline", "edm"]) == 2
    assert "--print-recipe shows the recipe of one new run: drop --baseline" in capsys.readouterr().err
    assert main(args + ["--compare-to", "edm"]) == 2  # the old name reaches the same check, with a note
    err = capsys.readouterr().err
    assert "--compare-to is now --baseline" in err and "drop --baseline" in err
    assert main(args + ["--compare-to", "edm", "--baseline", "edm"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert "--compare-to" not in COMMANDS["train"].format_help()

"""The README's promises that can be checked by running them: its Python snippet works when pasted,
its two set-up commands are the ones CI runs, and every file it links exists."""
import os
import re

from conftest import REPO

README = (REPO / "README.md").read_text()


def test_the_python_snippet_runs_when_pasted(tmp_path, monkeypatch):
    block = re.search(r"## Use a schedule in your own training loop.*?```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README snippet", "exec"), {})
    import multidiff

    loaded = multidiff.load_schedule(tmp_path / "my_schedule.json")
    assert loaded.table.method == "infonoise" and loaded.table.step == 300


def test_the_set_up_commands_are_what_ci_runs():
    commands = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    commands = [c for c in commands if not c.startswith("#")]
    assert len(commands) == 2
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[1] in ci  # the test command, verbatim


def test_linked_files_exist():
    for target in re.findall(r"\]\(([^)#:]+)\)", README):
        assert (REPO / target).exists(), target
    for name in re.findall(r"`((?:recipes|examples|tools)/[\w./-]+)`", README):
        assert (REPO / name).exists(), name
    assert os.access(REPO / "tools" / "device_suite.sh", os.X_OK)

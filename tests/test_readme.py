"""README stays true: its API example runs, and it holds exactly the two set-up commands CI relies on."""

import re
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_api_example_runs():
    block = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    namespace: dict = {}
    exec(block, namespace)  # noqa: S102 - our own documentation
    patches, plan = namespace["patches"], namespace["plan"]
    assert patches.shape == (plan.num_patches, 3, 96, 96)


def test_two_setup_commands():
    commands = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert len(commands) == 2
    assert "relpos train" in commands[0] and "pytest" in commands[1]
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert commands[1].strip() in ci

"""README's generated figures say exactly what the files in docs/ say (docs/regenerate.py writes both), and the
regeneration runs README's own first command."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("regenerate", ROOT / "docs" / "regenerate.py")
regenerate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(regenerate)


def test_readme_blocks_match_the_files_in_docs():
    expected = regenerate.render_blocks()
    found = regenerate.readme_blocks((ROOT / "README.md").read_text())
    assert expected, "docs/ holds no figures"
    for name, text in expected.items():
        assert found.get(name) == text, f"README block '{name}' differs from docs/: run python docs/regenerate.py"


def test_regeneration_runs_the_readme_command():
    args = regenerate.readme_train_args((ROOT / "README.md").read_text())
    assert args[:2] == ["--out", "runs/demo"] and "--steps" in args


def test_a_block_is_replaced_once():
    text = "a\n<!-- BEGIN x -->\nold\n<!-- END x -->\nb"
    assert regenerate.write_blocks(text, {"x": "new"}) == "a\n<!-- BEGIN x -->\nnew\n<!-- END x -->\nb"

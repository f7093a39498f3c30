"""The documentation site lists every reproduce command, each linking its committed report."""

import re
from pathlib import Path

import pytest

from spatialadv.experiments import experiments

ROOT = Path(__file__).resolve().parents[1]
NAMES = sorted(experiments())


@pytest.mark.parametrize("name", NAMES)
def test_every_experiment_has_a_page_in_the_nav(name):
    page = ROOT / "docs" / "experiments" / f"{name}.md"
    assert page.is_file(), f"add docs/experiments/{name}.md (and a nav entry in mkdocs.yml)"
    assert f"experiments/{name}.md" in (ROOT / "mkdocs.yml").read_text()
    assert f'experiment_options("{name}")' in page.read_text()
    assert f"(../results/{name}/report.md)" in page.read_text()


def test_pages_link_only_reports_that_exist():
    for page in (ROOT / "docs" / "experiments").glob("*.md"):
        for name in re.findall(r"\(\.\./results/([a-z0-9-]+)/report\.md\)", page.read_text()):
            assert (ROOT / "docs" / "results" / name / "report.md").is_file(), (page.name, name)

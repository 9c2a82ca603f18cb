"""The README documents what the product reads: every setting it names exists, and every setting is named."""

import re
from pathlib import Path

from recsys_pipeline.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_names_every_setting_and_only_real_ones():
    text = README.read_text()
    variables = set(Settings.variables())
    named = set(re.findall(r"\bRECSYS_[A-Z_]+[A-Z]\b", text))
    assert variables - named == set(), "settings the README does not document"
    assert named - variables == set(), "variables the README names that the product does not read"

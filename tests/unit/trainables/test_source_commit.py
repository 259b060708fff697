"""A lineage's runs name its code's commit in MLflow's standard source tag too (a parent run
created with it: tests/unit/trainables/test_tracking.py)."""
from __future__ import annotations

import pytest

from trainables.tracking import GIT_COMMIT_TAG, TAG, lineage_tags

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("rev, commit", [(SHA, SHA), (f"{SHA}-dirty", SHA), ("impsweep-0.1.0", None),
                                         (SHA[:12], None)])
def test_lineage_tags_name_the_commit_of_a_full_revision(tiny_spec, rev, commit):
    tags = lineage_tags(tiny_spec(), rev)
    assert tags[f"{TAG}code_rev"] == rev and tags.get(GIT_COMMIT_TAG) == commit

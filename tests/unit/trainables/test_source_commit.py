"""A lineage's parent run names its code's commit in MLflow's standard source tag too."""
from __future__ import annotations

from unittest.mock import MagicMock

import pytest
from mlflow.store.entities import PagedList

from trainables.tracking import GIT_COMMIT_TAG, TAG, ensure_parent_run, lineage_tags

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("rev, commit", [(SHA, SHA), (f"{SHA}-dirty", SHA), ("impsweep-0.1.0", None),
                                         (SHA[:12], None)])
def test_lineage_tags_name_the_commit_of_a_full_revision(tiny_spec, rev, commit):
    tags = lineage_tags(tiny_spec(), rev)
    assert tags[f"{TAG}code_rev"] == rev and tags.get(GIT_COMMIT_TAG) == commit


def test_a_new_parent_run_is_created_with_the_commit_tag(tiny_spec):
    """A client without runs (an MLflow store costs seconds to create): the run it is asked to
    create carries the tag."""
    client = MagicMock()
    client.search_experiments.return_value = []
    client.search_runs.return_value = PagedList([], None)
    ensure_parent_run(client, tiny_spec(), experiment_id="1", sweep="s", code_rev=f"{SHA}-dirty")
    tags = client.create_run.call_args.kwargs["tags"]
    assert tags[GIT_COMMIT_TAG] == SHA and tags[f"{TAG}code_rev"] == f"{SHA}-dirty"

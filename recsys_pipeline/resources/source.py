"""Where events and the item catalog come from."""

from __future__ import annotations

import dagster as dg

from recsys_pipeline.data.sources import EventSource, build_source
from recsys_pipeline.settings import get_settings


class SourceResource(dg.ConfigurableResource):
    """``kind="movielens"``: an extracted GroupLens release at ``movielens_path`` (unset: the bundled
    ml-latest-small). ``kind="daily_files"``: ``events_dir`` of ``YYYY-MM-DD.csv|.parquet|.jsonl`` files and a
    ``catalog_path`` file. Unset fields come from ``RECSYS_SOURCE_KIND``, ``RECSYS_MOVIELENS_PATH``,
    ``RECSYS_EVENTS_DIR``, ``RECSYS_CATALOG_PATH``. ``user_tags_in_text``: the item text also carries the users'
    tags (unset: ``RECSYS_USER_TAGS_IN_TEXT``, default off; see ``data.catalog.build_item_catalog``).
    """

    kind: str | None = None
    movielens_path: str | None = None
    events_dir: str | None = None
    catalog_path: str | None = None
    user_tags_in_text: bool | None = None

    def tags_in_text(self) -> bool:
        """Whether ``item_catalog``'s text carries the users' tags."""
        return self.user_tags_in_text if self.user_tags_in_text is not None else get_settings().user_tags_in_text

    def resolved_kind(self) -> str:
        return self.kind or get_settings().source_kind

    def build(self) -> EventSource:
        """The source (nothing is read yet).

        Raises:
            SourceError: an unknown kind, or ``daily_files`` without its two paths.
        """
        s = get_settings()
        return build_source(
            self.resolved_kind(),
            movielens_path=self.movielens_path or s.movielens_path,
            events_dir=self.events_dir or s.events_dir,
            catalog_path=self.catalog_path or s.catalog_path,
        )

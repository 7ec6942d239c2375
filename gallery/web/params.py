"""The site's query strings, each validated by one schema (a bad value is a 400 with one line)."""
from __future__ import annotations

from typing import Annotated, Literal

from flask import request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from gallery.store import Filters
from gallery.store.rows import SQLITE_INT_MAX
from gallery.validate import Whole, parse

Id = Annotated[Whole, Field(ge=1, le=SQLITE_INT_MAX, description="an image or job id (a whole number from 1)")]
Page = Annotated[Whole, Field(ge=1, le=100_000, description="a page number from 1")]


class GridQuery(BaseModel):
    """?before=ID&starred=1&job=ID&keyword=WORDS&collection=NAME&q=PHRASE&page=N&like=ID&k=N&limit=N"""

    model_config = ConfigDict(extra="ignore")

    before: Id | None = None
    after: Id | None = None
    starred: Annotated[bool, Field(description="1 or 0")] = False
    rating: Annotated[Whole, Field(ge=0, le=5, description="a whole number from 0 to 5")] = 0
    order: Annotated[Literal["newest", "rating", "taste"], Field(description="newest, rating or taste")] = "newest"
    job: Id | None = None
    keyword: Annotated[StrictStr | None, Field(max_length=200, description="words of at most 200 characters")] = None
    collection: Annotated[StrictStr | None, Field(max_length=200, description="a collection name")] = None
    backend: Annotated[Literal["diffusion", "siren", "vqgan", "biggan"] | None,
                       Field(description="diffusion, siren, vqgan or biggan")] = None
    q: Annotated[StrictStr | None, Field(max_length=1000, description="a phrase of at most 1000 characters")] = None
    page: Page = 1
    like: Id | None = None
    k: Annotated[Whole, Field(ge=1, le=500, description="a whole number from 1 to 500")] = 24
    limit: Annotated[Whole, Field(ge=1, le=500, description="a whole number from 1 to 500")] = 60

    @property
    def filters(self) -> Filters:
        """The filters these parameters set."""
        keyword = (self.keyword or "").strip() or None
        return Filters(starred=self.starred, job_id=self.job, keyword=keyword, min_rating=self.rating,
                       collection=(self.collection or "").strip() or None, backend=self.backend)

    def link(self, **changes) -> dict:
        """Query parameters of a link to this listing with some of them changed (defaults left out)."""
        values = {"starred": 1 if self.starred else None, "job": self.job, "keyword": self.keyword,
                  "collection": self.collection, "backend": self.backend,
                  "q": self.q, "rating": self.rating or None,
                  "order": None if self.order == "newest" else self.order, **changes}
        return {k: v for k, v in values.items() if v is not None}

    @property
    def phrase(self) -> str:
        """The search phrase ('' when browsing)."""
        return (self.q or "").strip()


def grid_query() -> GridQuery:
    """This request's query string, validated."""
    args = {k: v for k, v in request.args.items() if v != ""}
    return parse(GridQuery, args)

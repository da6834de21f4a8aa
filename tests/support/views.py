"""A real view store seen through a wrapper whose subclasses change one behaviour."""

from __future__ import annotations

from ledger.generations import Generation, GenerationViews
from ledger.views.port import ViewStore


class WrappedViews(GenerationViews):
    """Every call goes to `inner` unchanged (generation 0 maps no names); subclasses
    override the calls they make fail, wait or count."""

    def __init__(self, inner: ViewStore) -> None:
        super().__init__(inner, Generation("wrapped", 0, 0))

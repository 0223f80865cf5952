"""Unit tests of the blog rules: the state machine, slugs, tags."""

from __future__ import annotations

import pytest

from mosaic_blog.service import normalise_slug, normalise_tags, valid_slug
from mosaic_blog.workflow import TRANSITIONS, Action, State, next_state
from mosaic_kit.problem import Problem

LEGAL = {
    (State.DRAFT, Action.SUBMIT): State.SUBMITTED,
    (State.SUBMITTED, Action.WITHDRAW): State.DRAFT,
    (State.SUBMITTED, Action.PUBLISH): State.PUBLISHED,
    (State.PUBLISHED, Action.UNPUBLISH): State.DRAFT,
}


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("action", list(Action))
def test_every_state_and_action(state: State, action: Action) -> None:
    if (state, action) in LEGAL:
        assert next_state(state, action) is LEGAL[(state, action)]
    else:
        with pytest.raises(Problem) as info:
            next_state(state, action)
        assert info.value.status == 409
        assert info.value.code == "blog.bad_state"


def test_the_table_is_the_documented_one() -> None:
    assert {(s, a): t for a, (s, t) in TRANSITIONS.items()} == LEGAL


@pytest.mark.parametrize(
    ("raw", "slug"),
    [
        ("Hello World", "hello-world"),
        ("  Mixed_Case__slug ", "mixed-case-slug"),
        ("a--b---c", "a-b-c"),
        ("-edge-", "edge"),
        ("already-fine-123", "already-fine-123"),
    ],
)
def test_slugs_are_normalised(raw: str, slug: str) -> None:
    assert normalise_slug(raw) == slug
    assert valid_slug(slug)


@pytest.mark.parametrize("raw", ["ab", "x" * 201, "héllo", "semi;colon", "q?", "a/b"])
def test_invalid_slugs_stay_invalid(raw: str) -> None:
    assert not valid_slug(normalise_slug(raw))


def test_tags_are_upper_cased_trimmed_and_deduplicated() -> None:
    assert normalise_tags([" python", "Python", "AI ", "ai", "go"]) == ["PYTHON", "AI", "GO"]

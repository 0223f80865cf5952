"""The blog lifecycle, in one place: which action takes a blog from which state to which.

draft --submit--> submitted --publish--> published
  ^                   |                      |
  +-----withdraw------+                      |
  +--------------------unpublish-------------+
"""

from __future__ import annotations

from enum import StrEnum

from mosaic_kit.problem import Problem


class State(StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    PUBLISHED = "published"


class Action(StrEnum):
    SUBMIT = "submit"
    WITHDRAW = "withdraw"
    PUBLISH = "publish"
    UNPUBLISH = "unpublish"


TRANSITIONS: dict[Action, tuple[State, State]] = {
    Action.SUBMIT: (State.DRAFT, State.SUBMITTED),
    Action.WITHDRAW: (State.SUBMITTED, State.DRAFT),
    Action.PUBLISH: (State.SUBMITTED, State.PUBLISHED),
    Action.UNPUBLISH: (State.PUBLISHED, State.DRAFT),
}


def next_state(current: State, action: Action) -> State:
    """The state `action` leads to from `current`, or a 409 `blog.bad_state`."""
    source, target = TRANSITIONS[action]
    if current != source:
        raise Problem(
            409,
            "blog.bad_state",
            f"Cannot {action.value} a blog that is {current.value} (it must be {source.value})",
        )
    return target

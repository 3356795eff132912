"""Every string option, defined once as a str-Enum: members are the strings they stand for,
and a bad value is refused naming the argument, the choices and what arrived."""

from __future__ import annotations

import json

import pytest

from bt_laplace import choices
from bt_laplace._checks import check_choice
from bt_laplace.choices import Choice, LinkApprox, Penalty, SubsetOfWeights, Truncation

ALL = [c for c in vars(choices).values() if isinstance(c, type) and issubclass(c, Choice)]


@pytest.mark.parametrize("cls", [c for c in ALL if c is not Choice], ids=lambda c: c.__name__)
def test_members_are_their_strings(cls):
    for member in cls:
        assert member == member.value and str(member) == member.value
        assert f"{member}" == member.value and hash(member) == hash(member.value)
        assert cls.check("arg", member.value) is member
        assert cls.check("arg", member) is member
    assert json.loads(json.dumps(list(cls))) == list(cls.values())


def test_a_bad_value_names_the_argument_the_choices_and_what_came():
    with pytest.raises(
        ValueError, match=r"`truncation` must be one of \('error', 'left', 'right'\), got 'middle'"
    ):  # noqa: E501
        Truncation.check("truncation", "middle")
    with pytest.raises(ValueError, match=r"`link_approx` must be one of .*got 3"):
        LinkApprox.check("link_approx", 3)
    with pytest.raises(ValueError, match="`subset_of_weights` must be one of"):
        check_choice("subset_of_weights", "some", SubsetOfWeights)


def test_the_option_tuples_are_read_off_the_enums():
    from bt_laplace import options, penalties

    assert options.SUBSETS == SubsetOfWeights.values()
    assert options.LINK_APPROXIMATIONS == LinkApprox.values()
    assert penalties.PENALTIES == Penalty.values()

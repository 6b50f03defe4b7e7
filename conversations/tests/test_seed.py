"""The seed job in-process: the tutorial's three users, once."""

import os

import pytest
from django.core.management import call_command

from conversations.management.commands.seed import SEED_USERS
from conversations.models import User


@pytest.mark.django_db(transaction=True, reset_sequences=True)
def test_seed_writes_ids_1_to_3_on_a_fresh_database_and_is_idempotent():
    call_command("seed", stdout=open(os.devnull, "w"))
    call_command("seed", stdout=open(os.devnull, "w"))
    assert list(User.objects.order_by("pk").values_list("pk", "name")) == list(SEED_USERS)
    # The id sequence continues after the seeded rows.
    assert User.objects.create(name="next").pk == 4

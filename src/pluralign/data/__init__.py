"""Preference data: the index-array dataset, readers and writers, and seeded splits."""

from pluralign.data.comparisons import PreferenceData
from pluralign.data.readers import read_preferences, write_preferences
from pluralign.data.splits import split_per_user, split_users, take_per_user
from pluralign.errors import DataError

__all__ = [
    "DataError",
    "PreferenceData",
    "read_preferences",
    "split_per_user",
    "split_users",
    "take_per_user",
    "write_preferences",
]

"""What reading Polis conversations gave and skipped (the report), and the CC BY 4.0 attribution.

Part of :mod:`pluralign.datasets.polis`, which re-exports the report classes and the attribution constants.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "ATTRIBUTION",
    "CASE_STUDIES",
    "LICENSE",
    "LICENSE_URL",
    "STATEMENT_REASONS",
    "USER_REASONS",
    "VOTE_REASONS",
    "ConversationReport",
    "PolisReport",
]

ATTRIBUTION = (
    "Data was gathered using the Polis software (compdemocracy.org/polis) and is sub-licensed under "
    "CC BY 4.0 with Attribution to The Computational Democracy Project. The data and more information "
    "about how the data was collected can be found at the following link(s):"
)
LICENSE = "CC BY 4.0"
LICENSE_URL = "https://creativecommons.org/licenses/by/4.0/"
_CASES = "https://compdemocracy.org/case-studies/"
#: case-study URL of each openData conversation folder (from the openData README's attribution list)
CASE_STUDIES = {
    "15-per-hour-seattle": _CASES + "2014-seattle-15-per-hour",
    "bowling-green.american-assembly": _CASES + "2018-kentucky",
    "brexit-consensus": _CASES + "2017-brexit-consensus",
    "canadian-electoral-reform": _CASES + "2016-canadian-electoral-reform",
    "football-concussions": _CASES + "2015-football-concussions",
    "operation-marching-orders.march-on": _CASES + "2018-march-on",
    "scoop-hivemind.affordable-housing": _CASES + "2017-scoop-hivemind-affordable-housing",
    "scoop-hivemind.biodiversity": _CASES + "2019-scoop-hivemind-biodiversity",
    "ssis.land-bank-farmland.2rumnecbeh.2021-08-01": _CASES + "2021-san-juan-island",
    "uberx.taiwan": _CASES + "2015-vtaiwan-uberx",
}

VOTE_REASONS = ("moderated_out", "empty_statement", "pass", "below_min_votes")
USER_REASONS = ("no_votes", "below_min_votes")
STATEMENT_REASONS = ("moderated_out", "empty_text", "no_rows")


# ========================================================================================================
# report
# ========================================================================================================
@dataclass(frozen=True)
class ConversationReport:
    """What one conversation gave and what was skipped, and why.

    Invariants: ``final_votes == rows + sum(skipped_votes[r] for r in VOTE_REASONS)``,
    ``vote_events == final_votes + superseded``, ``participants == users + sum(skipped_users.values())``,
    ``statements == statements_with_rows + sum(skipped_statements.values())``.
    """

    name: str
    path: str
    votes_from: str
    topic: str
    url: str | None
    case_study_url: str | None
    participants: int
    users: int
    statements: int
    statements_voted: int
    statements_with_rows: int
    vote_events: int
    final_votes: int
    rows: int
    agree: int
    disagree: int
    superseded: int
    ties_broken_by_line: int
    has_groups: bool
    groups: int
    skipped_votes: dict[str, int]
    skipped_users: dict[str, int]
    skipped_statements: dict[str, int]
    files: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PolisReport:
    """Per-conversation reports plus the options they were read with; ``ignored`` lists subfolders of a
    folder of conversations that hold no Polis export file."""

    conversations: tuple[ConversationReport, ...]
    options: dict[str, Any]
    ignored: tuple[str, ...] = ()

    def totals(self) -> dict[str, Any]:
        keys = ("participants", "users", "statements", "statements_voted", "statements_with_rows")
        keys += ("vote_events", "final_votes", "rows", "agree", "disagree", "superseded")
        return {k: sum(getattr(c, k) for c in self.conversations) for k in keys}

    def skipped(self) -> dict[str, dict[str, int]]:
        """Counts by reason, summed over conversations: votes, users, statements."""
        out: dict[str, dict[str, int]] = {}
        for kind, reasons in (
            ("votes", (*VOTE_REASONS, "superseded")),
            ("users", USER_REASONS),
            ("statements", STATEMENT_REASONS),
        ):
            out[kind] = {
                r: sum(
                    c.superseded if r == "superseded" else getattr(c, f"skipped_{kind}")[r]
                    for c in self.conversations
                )
                for r in reasons
            }
        return out

    def table(self) -> list[dict[str, Any]]:
        """One summary line per conversation (and a total line when there are several)."""
        lines = [
            _table_line(c.name, c.as_dict(), c.skipped_votes, c.skipped_users) for c in self.conversations
        ]
        if len(self.conversations) > 1:
            skipped = self.skipped()
            lines.append(_table_line("total", self.totals(), skipped["votes"], skipped["users"]))
        return lines


def _table_line(name: str, c: dict[str, Any], votes: dict[str, int], users: dict[str, int]) -> dict[str, Any]:
    return {
        "conversation": name,
        "users": c["users"],
        "statements": c["statements_with_rows"],
        "rows": c["rows"],
        "agree": round(c["agree"] / c["rows"], 4) if c["rows"] else None,
        "passes": votes["pass"],
        "moderated_out": votes["moderated_out"],
        "users_skipped": sum(users.values()),
    }

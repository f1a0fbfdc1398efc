"""The Persona dataset of the PAL paper (App. D.4, Table 7): synthetic users who each hold one persona.

Anthropic's model-written persona statements (Perez et al. 2022, CC BY 4.0; the six Table 7 personas ship in
``persona_data/``, see SOURCE.md there) list, per persona ρ, statements with ``answer_matching_behavior``
``" Yes"`` (the set S(ρ)) or ``" No"``. For K* personas the builder makes synthetic users, each assigned one
persona, and asks each user about statements drawn from the pool of all K* personas' statements: the prompt
is the statement's ``question`` ("Is the following statement something you would say?\\n"..."") and the user
prefers "Yes" over "No" exactly when the statement is in S(own persona), else "No" over "Yes".

Statements that occur more than once (the overlap rule): the pool is the set of *distinct* statements
(exact string match) in the K* files, in order of first appearance (persona order, then line order), so
each becomes one context. A persona's S(ρ) is the set of statements with ``" Yes"`` in ρ's own file; a
statement from another persona's file is a distractor whose answer follows from S(ρ) membership, even when
that other file labels it differently. A statement repeated inside one file with the same answer counts once;
with opposite answers it is a DataError (S(ρ) would be ambiguous), and so is a statement seen with two
different ``question`` texts or two statements sharing one question (the contexts must be one-to-one with
statements). Counts: the six Table 7 files hold 6,000 distinct statements, with no statement repeated
within or across files; 14 pairs differ only in letter case (e.g. "Art is boring" / "art is boring",
always in the same file with the same answer) and are kept as distinct contexts. Across all 135 persona
files of the source, 858 statements occur in more than one file and 116 of those with opposite answers;
the rule above covers them.

Scale: the paper's setting (K* = 4, N = 10,000 users per persona, 1,000 queries each) is 40M comparisons;
rows are generated per persona in fixed chunks of users with vectorized NumPy, so the cost is the four int64
index arrays of :class:`PreferenceData` (32 bytes a row, 1.3 GB) plus a few MB of work space.

The parts: statement files and the pool in :mod:`pluralign.datasets.persona_statements`, the simulated
users and :func:`build_persona` in :mod:`pluralign.datasets.persona_users`, and the directory format of
:func:`write_persona`/:func:`read_persona` in :mod:`pluralign.datasets.persona_files`; this module is
the one to import from.
"""

from __future__ import annotations

from pluralign.datasets.persona_files import FORMAT as FORMAT  # re-exported
from pluralign.datasets.persona_files import FORMAT_VERSION as FORMAT_VERSION  # re-exported
from pluralign.datasets.persona_files import read_persona, write_persona
from pluralign.datasets.persona_statements import (
    PERSONAS_BY_K,
    StatementPool,
    load_statements,
    shipped_data_dir,
)
from pluralign.datasets.persona_users import ITEMS, PersonaDataset, build_persona
from pluralign.datasets.persona_users import embed_persona as embed_persona  # re-exported

__all__ = [
    "ITEMS",
    "PERSONAS_BY_K",
    "PersonaDataset",
    "StatementPool",
    "build_persona",
    "load_statements",
    "read_persona",
    "shipped_data_dir",
    "write_persona",
]

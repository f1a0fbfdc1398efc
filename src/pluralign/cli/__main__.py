"""`python -m pluralign.cli ...` (what torchrun launches)."""

from pluralign.cli import main

main()

"""`python -m orchestration.cli` (what `torchrun ... -m orchestration.cli train` starts in each worker)."""

from orchestration.cli import main

main()

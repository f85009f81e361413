"""The online scoring service (DESIGN.md §8); not built yet: no issue has asked for it so far."""

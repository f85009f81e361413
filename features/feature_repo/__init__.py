"""The Feast feature repository (usable with the `feast` CLI) and its builder."""

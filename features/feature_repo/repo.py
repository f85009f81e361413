"""Module-level Feast objects for the ``feast`` CLI (``feast -c features/feature_repo apply``).

The objects are built from the environment's settings (``CTRFLOW_HOME``), exactly as ``ctrflow`` builds
them, so the CLI and the application always agree on sources and paths.
"""

from features.feature_repo.definitions import build_definitions
from pipelines.settings import get_settings

_definitions = build_definitions(get_settings())

user = _definitions.entities["user"]
item = _definitions.entities["item"]
user_stats_push = _definitions.push_sources["user_stats"]
item_stats_push = _definitions.push_sources["item_stats"]
user_sequences_push = _definitions.push_sources["user_sequences"]
item_attributes_push = _definitions.push_sources["item_attributes"]
user_stats = _definitions.views["user_stats"]
item_stats = _definitions.views["item_stats"]
user_sequence = _definitions.views["user_sequence"]
item_attributes = _definitions.views["item_attributes"]
sequence_ctr = _definitions.services["sequence_ctr"]
tabular_ctr = _definitions.services["tabular_ctr"]
sequence_ctr_serving = _definitions.services["sequence_ctr__serving"]
tabular_ctr_serving = _definitions.services["tabular_ctr__serving"]

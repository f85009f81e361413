"""Apache Beam feature jobs: Kafka (or a log file) -> labelled samples, windowed stats, behaviour sequences.

Modules, one job each: ``options`` (runner + pipeline options), ``kafka_source`` (offset planner and
range reader), ``parse`` (records -> Arrow events + dead letters), ``attribution``, ``stats`` and
``sequences`` (vectorised feature cores), ``shards`` (entity sharding), ``state`` (checkpoint and state
snapshot), ``sinks`` (Parquet + DuckDB views), ``transforms`` (the Beam DoFns), ``graph`` (the named
composite stages of one micro-batch's graph) and ``job`` (micro-batch, bounded and continuous entry
points).
"""

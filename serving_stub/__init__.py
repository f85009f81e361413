"""The online scoring service: ``ctrflow serve`` (``app``, ``server``), its direct online-store reads
(``online_reader``), the request encoder (``scoring``), champion hot reload (``champion``), the
prediction log (``predlog``) and the promotion gate's servability check (``servability``)."""

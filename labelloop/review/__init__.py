"""Human review in Label Studio: routing, idempotent import, incremental sync, correction log.

``routing`` decides per prediction (auto / review / audit) and stores the decision; ``importer``
puts pending review tasks into the spec's project (``projects``, images via ``media``);
``sync`` brings annotations back as records and field corrections; ``convert`` is the one place
that maps records to Label Studio results and back. ``client`` builds the SDK client and
``server`` runs a local Label Studio for tests and benchmarks. Nothing here imports Airflow.
"""

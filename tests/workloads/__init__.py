"""Generated schemas and workloads for restore tests (hypothesis strategies and runners).

- ``schema``: a schema as plain data, its DDL per dialect and its configuration;
- ``workload``: a workload as plain data, and the application that plays it;
- ``strategies``: hypothesis strategies for both, minus features switched off;
- ``restoring``: restores under a timeout, pre-seeded and drifted targets, reading back;
- ``case``: one case end to end, with failures classed by restore mode and kind;
- ``features``: the names of the features a test can switch off.

FINDINGS.md lists what the generated tests found.
"""

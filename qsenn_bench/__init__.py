"""Benchmarks and whole-run validation on top of the three packages: `qsenn bench` (latency,
throughput, memory and agreement per backend) and `qsenn validate-run`. It may import qsenn_train,
qsenn_export and qsenn_runtime; none of them imports it."""

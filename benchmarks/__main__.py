"""``python -m benchmarks [--quick]``: ssegate against its peers; see benchmarks/__init__.py."""

from ._cli import main

main()

"""Frontend tests share the root conftest (which puts ``tests/`` on sys.path for ``import models``)."""

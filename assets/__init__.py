"""kseg's Dagster code location: one partition per image, every step a cached asset.

This package must stay import-light: ``kseg segment`` imports :mod:`assets.cli`,
which must not pay for importing Dagster. Import :mod:`assets.definitions` (or the
modules it wires) to get the Dagster objects.
"""

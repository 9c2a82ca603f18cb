"""The data layer: sources (MovieLens, daily files), cleaning + quarantine, the item catalog, the schema of every
table and the DuckDB warehouse (all DDL). No Dagster import; imports only ``settings``."""

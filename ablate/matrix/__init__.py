"""The matrix: a YAML file (yamlfile) → validated MatrixSpec (ablate/schema.py) → cells with content-hashed ids
(cells) → a plan with its data and every problem found before Ray starts (plan)."""

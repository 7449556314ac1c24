"""The reviewers' web workspace, served by `registry serve` at `/`: pages over the same services as the CLI and
the HTTP API (review queue, match pages, individuals, possible duplicates, activity), no logic of its own."""

"""Results: run records and model bundles (sole owner of their schema), leaderboard, report, predict."""

"""From ablation to the team's tools: export a cell as a loadable model with a card, and log to trackers."""

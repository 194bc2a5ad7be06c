"""What talks to the agent clients: their configs, their hooks, channel pushes, the git guard."""

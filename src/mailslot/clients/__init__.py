"""What talks to the agent clients: their configs, their hooks, the git guard."""

"""The commands of `mailslot`, below its front (`mailslot.cli`): each declared beside its handler
(`declare`), grouped by concept (setup, threads, tasks, reservations, agents, serve)."""

"""The console (`mailslot ui`): a live page where a person watches and answers threads."""

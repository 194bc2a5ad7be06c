"""What a person reads: the console (`mailslot ui`, a live page where a person watches and
answers threads: `server` and the page's own files), a thread as one document (`transcript`),
and messages, agents and reports as a terminal shows them (`terminal`)."""

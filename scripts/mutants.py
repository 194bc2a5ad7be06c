"""Mutation check: apply deliberate bugs to a copy of src/, one at a time, and see the tests fail.

Each mutant breaks one promise the README makes (or one the suite is known to guard) by
replacing an exact piece of text in one file of src/mailslot/. It is applied to a fresh copy of
src/, and the tests named beside it run against that copy (PYTHONPATH points at it; the tests
pass it on to every `mailslot serve` and worker process they start). A mutant is *killed* when
those tests fail, and *survives* when they pass: then nothing would notice that bug.

The text a mutant replaces must occur exactly once in its file; when the code has moved so it
does not, the mutant is reported as STALE and the run fails, rather than passing quietly.
Before the mutants, the same tests run once against an unchanged copy, so a kill means the bug
was caught, not that the tests were failing anyway.

    python scripts/mutants.py            # every mutant, then a table; exit 1 unless all killed
    python scripts/mutants.py --list     # the mutants and their tests
    python scripts/mutants.py heartbeat fsync-file   # only these (names or parts of names)

Not part of the default test run: it takes several minutes (each mutant starts pytest, and some
wait for a timeout that an unbroken build never reaches).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    claim: str  # what breaks, in the README's words
    file: str  # under src/mailslot/
    old: str  # exact text, which must occur once in file
    new: str
    tests: tuple[str, ...]  # pytest node ids, relative to the repository


MUTANTS = [
    # ---------------------------------------------------------------- the claims of the issue
    Mutant(
        "watch-handler-silent",
        "Waiting: wakes the moment another process publishes (the observer's handler signals)",
        "store/watch.py",
        "                watcher.folder_event(event)\n            watcher.notify()\n",
        "                watcher.folder_event(event)\n",
        (
            "tests/test_wait.py::test_waiter_in_another_process_wakes",
            "tests/test_watch.py::test_watcher_signals_when_a_created_file_is_filled",
        ),
    ),
    Mutant(
        "watcher-notify-noop",
        "Waiting: the watcher signals every subscriber",
        "store/watch.py",
        "            callbacks = list(self._subscribers.values())\n",
        "            callbacks = []\n",
        ("tests/test_wait.py::test_waiter_in_another_process_wakes",),
    ),
    Mutant(
        "fsync-temp-file-skipped",
        "Stored means stored: the message file is fsynced before it is published",
        "store/files.py",
        "                os.fsync(fd)\n        finally:\n            os.close(fd)\n\n"
        "    def write_tmp",
        "                pass\n        finally:\n            os.close(fd)\n\n    def write_tmp",
        ("tests/test_durability.py",),
    ),
    Mutant(
        "fsync-folder-skipped",
        "Stored means stored: the folder is fsynced before post returns",
        "store/publish.py",
        "                    fsync_dir(tdir)\n",
        "                    pass\n",
        ("tests/test_durability.py",),
    ),
    Mutant(
        "fsync-false-ignored",
        'Durability: "fsync": false syncs neither file nor folder',
        "store/publish.py",
        "            if self.files.settings.fsync:\n                try:\n"
        "                    fsync_dir",
        "            if True:\n                try:\n                    fsync_dir",
        ("tests/test_durability.py::test_fsync_false_syncs_neither",),
    ),
    Mutant(
        "positions-never-flushed",
        "Read positions: a running server writes a moved position within a second or so",
        "server/connection.py",
        "        session.flush_positions()\n",
        "        pass\n",
        (
            "tests/test_positions.py::test_a_running_server_writes_a_moved_position_within_a_second_or_so",
        ),
    ),
    Mutant(
        "heartbeat-never-refreshes",
        "Presence: each server refreshes its presence file every timeout/3 seconds",
        "server/connection.py",
        "            state.session.heartbeat()\n",
        "            pass\n",
        ("tests/test_presence.py::test_a_server_stays_present_past_its_heartbeat_timeout",),
    ),
    Mutant(
        "hold-name-ignores-other-hosts",
        "Presence: a name live on another machine (fresh presence file) cannot be taken",
        "store/agents.py",
        'if hold is None or (current.status != "offline" and current.host != HOST):',
        "if hold is None:",
        ("tests/test_presence.py",),
    ),
    Mutant(
        "saved-position-ignored",
        "Read positions: a restarted agent continues from its saved position",
        "agent/reading.py",
        "stored = self.box.load_cursor(agent, thread) if agent else None",
        "stored = None",
        ("tests/test_positions.py::test_a_restarted_agent_continues_from_its_saved_position",),
    ),
    Mutant(
        "saved-position-not-read",
        "Read positions: a position saved for this incarnation of the thread is used",
        "store/positions.py",
        '_seq(doc.get("read")), _seq(doc.get("inbox")),',
        "None, None,",
        ("tests/test_positions.py::test_a_restarted_agent_continues_from_its_saved_position",),
    ),
    Mutant(
        "killed-server-reads-online",
        "Presence: a killed server reads as offline at once on its own machine",
        "store/presence.py",
        'elif doc.get("host") == host and pid is not None and not pid_alive(pid):',
        "elif False:",
        ("tests/test_e2e.py::test_killed_server_reads_offline",),
    ),
    Mutant(
        "msg-wait-drops-damage",
        "msg_wait returns `unreadable` for what it stepped over",
        "agent/inbox.py",
        "            skipped += got.skipped\n",
        "            skipped += []\n",
        ("tests/test_positions.py::test_waits_report_what_they_stepped_over",),
    ),
    Mutant(
        "inbox-wait-drops-damage",
        "msg_wait (inbox) returns `unreadable` for what it stepped over",
        "tools.py",
        '        if cut is not None or self._reading.owes:\n            out["has_more"] = True\n'
        "        trouble(out, got.arrivals.skipped, got.arrivals.pending)\n",
        '        if cut is not None or self._reading.owes:\n            out["has_more"] = True\n'
        "        trouble(out, [], got.arrivals.pending)\n",
        ("tests/test_positions.py::test_waits_report_what_they_stepped_over",),
    ),
    Mutant(
        "library-wait-drops-damage",
        "Damage on disk is reported to every reader (Arrivals.skipped)",
        "store/wait.py",
        "                    self.skipped.extend(page.skipped)\n",
        "                    pass\n",
        ("tests/test_positions.py::test_waits_report_what_they_stepped_over",),
    ),
    # ---------------------------------------------------------------- known to be caught
    Mutant(
        "link-becomes-replace",
        "Exactly once: publish with a no-replace link (os.replace overwrites)",
        "store/files.py",
        "                os.link(tmp, target)\n",
        "                os.replace(tmp, target)\n",
        (
            "tests/test_concurrency.py::test_a_writer_that_lost_the_race_takes_the_next_seq",
            "tests/test_concurrency.py::test_eight_writers_and_a_reader[nolock]",
        ),
    ),
    Mutant(
        "lock-dropped",
        "The per-thread lock is taken while claiming a seq",
        "store/files.py",
        "                _flock.lock(fd)\n",
        "                pass\n",
        ("tests/test_concurrency.py::test_dead_lock_holder_does_not_block_writers",),
    ),
    Mutant(
        "msg-wait-returns-at-once",
        "msg_wait blocks until new messages arrive",
        "tools.py",
        "        timeout = self.wait_default if timeout_s is None else "
        "min(timeout_s, self.wait_max)\n",
        "        timeout = 0.0\n",
        ("tests/test_tools.py::test_wait_returns_new_messages_and_remembers",),
    ),
    Mutant(
        "doctor-always-healthy",
        "mailslot doctor reports what is wrong",
        "doctor/report.py",
        "        return not any(f.outstanding for f in self.findings)\n",
        "        return True\n",
        ("tests/test_commands.py::test_doctor_finds_and_fixes",),
    ),
    Mutant(
        "idempotency-keys-never-match",
        "Idempotency: a retried post with the same key returns the first seq",
        "store/publish.py",
        "        seen = self._find_keyed(thread, tdir, marker, message.id)\n",
        "        seen = None\n",
        ("tests/test_store.py::test_idempotency_key_stores_once",),
    ),
    Mutant(
        "error-text-becomes-error",
        "Every expected failure is tool error text that says what to call next",
        "stdio_server.py",
        "    if isinstance(e, NoSuchThread):\n        near = ",
        '    return "error"\n    if isinstance(e, NoSuchThread):\n        near = ',
        ("tests/test_server.py::test_damage_and_vanishing_never_kill_the_server",),
    ),
    # ------------------------------------------ issue 26, from its mutation audit (one per area)
    Mutant(
        "search-repair-from-highest-stale",
        "Search: a hit that is not what was indexed has its thread indexed again from below it",
        "coordination/search_index.py",
        "lowest[thread] = min(seq, lowest.get(thread, seq))",
        "lowest[thread] = max(seq, lowest.get(thread, seq))",
        ("tests/test_search.py::test_two_messages_rewritten_in_the_middle_are_both_found_at_once",),
    ),
    Mutant(
        "notices-ignore-thread-reads",
        "Hooks: what msg_wait or msg_list showed the agent is not reported again",
        "agent/notices.py",
        "if m.seq in seen or m.sender == me or pos.was_shown(m.seq):",
        "if m.seq in seen or m.sender == me:",
        (
            "tests/test_hooks.py::test_news_the_agent_read_in_the_thread_is_not_reported",
            "tests/test_hooks.py::test_a_thread_wait_from_now_leaves_what_came_before_it_as_news",
        ),
    ),
    Mutant(
        "push-reads-disk-positions",
        "Channels: a push goes by the session's own positions, not the disk copy written later",
        "clients/channels.py",
        "notices = Notices(box, me, session.reading)",
        "notices = Notices(box, me)",
        ("tests/test_channels.py::test_what_a_quick_wait_returned_is_not_pushed",),
    ),
    Mutant(
        "activity-written-per-whole-hold",
        "Leases: a call writes its activity when it is older than a quarter of the shortest hold",
        "coordination/leases.py",
        "return every is not None and active - self.written >= every",
        "return every is not None and active - self.written >= every * 4",
        ("tests/test_tasks_mcp.py::test_calls_spaced_under_the_lease_keep_it_each_one_written",),
    ),
    Mutant(
        "task-lost-claim-takes-process",
        "Tasks: a claim that loses changes nothing of the hold (its process is the holder's)",
        "coordination/board.py",
        "elif not (task.status == CLAIMED and task.holder == m.sender):",
        "elif task.status != CLAIMED:",
        ("tests/test_tasks.py::test_a_lost_claim_leaves_the_holders_process_and_lease",),
    ),
    Mutant(
        "reservation-expiry-by-anyone",
        "Reservations: only mailslot ends a reservation as expired",
        "coordination/reservations.py",
        "elif isinstance(end, dict) and m.sender == SYSTEM:",
        "elif isinstance(end, dict):",
        ("tests/test_reservations.py::test_the_ledger_of_events_as_clones_leave_them",),
    ),
    Mutant(
        "guard-report-raw-name",
        "Guard: a file name with a newline or tab is shown quoted, not breaking the report's lines",
        "clients/guard.py",
        "path = c.path if c.path.isprintable() else json.dumps(c.path, ensure_ascii=False)",
        "path = c.path",
        ("tests/test_guard.py::test_the_guard_reads_names_git_quotes",),
    ),
    Mutant(
        "console-token-logs-in-anywhere",
        "Console: ?token= is exchanged for the cookie at / only, never a login elsewhere",
        "console/server.py",
        'if request.url.path == "/" and "token" in request.query_params:\n            return None',
        'if "token" in request.query_params:\n            return None',
        ("tests/test_console.py::test_the_token_in_the_address_logs_in_only_on_the_page",),
    ),
    Mutant(
        "cli-names-wrong-byte",
        "The command: an argument that is not UTF-8 is a usage error naming the bad byte",
        "cli.py",
        'byte = raw[len(a[: e.start].encode("utf-8", "surrogateescape"))]',
        "byte = raw[e.start]",
        ("tests/test_cli.py::test_arguments_that_are_not_utf8_are_a_usage_error",),
    ),
    Mutant(
        "wait-nothing-ever-hot",
        "Waiting: a poll tick looks at the threads that got news during the wait every time",
        "store/wait.py",
        "        self.looked = True\n",
        "",
        (
            "tests/test_wait.py::test_a_thread_that_got_news_during_a_poll_wait_is_looked_at_every_tick",
        ),
    ),
    # ------------------------------------------ issue 27, from its mutation audit (one per area)
    Mutant(
        "takeback-frees-any-claim",
        "Tasks: a person's take-back counts only for the claim it names (meta.task.claim)",
        "coordination/board.py",
        'taken_back = named == task.holder and ev.get("claim") == task.claim',
        "taken_back = named == task.holder",
        ("tests/test_tasks.py::test_the_fold_of_events_as_clones_leave_them",),
    ),
    Mutant(
        "takeback-guard-ignores-claim",
        "Tasks: a take-back whose claim changed hands while it waited for the lock is refused",
        "coordination/tasks.py",
        "or now.holder != whose or now.claim != claim:",
        "or now.holder != whose:",
        ("tests/test_tasks.py::test_a_take_back_that_lost_a_race_says_so_and_frees_nothing",),
    ),
    Mutant(
        "result-hint-not-the-held-task",
        "Task rules: a result without reply_to is pointed at the task its sender holds",
        "coordination/tasks.py",
        "                [t for t in unfinished if t.holder == sender]\n                or ",
        "                ",
        (
            "tests/test_task_rules.py::test_a_result_without_reply_to_is_pointed_at_the_task_its_sender_means",
        ),
    ),
    Mutant(
        "error-addressed-to-holder",
        "Task rules: only a result that closes a task under its holder is addressed to the holder",
        "coordination/tasks.py",
        'if type_ == "result" and task.status == CLAIMED and task.holder',
        "if task.status == CLAIMED and task.holder",
        (
            "tests/test_task_rules.py::test_an_error_from_another_agent_while_held_is_a_remark_for_the_thread",
        ),
    ),
    Mutant(
        "claude-hooks-committed-with-a-root",
        "mcp-config: hooks naming this machine's root go to .claude/settings.local.json",
        "clients/hook_configs.py",
        '"settings.json" if at is None or at.shared else',
        '"settings.json" if at is None or at.bare else',
        (
            "tests/test_clients_config.py::test_a_mailbox_outside_the_project_keeps_claudes_files_local",
        ),
    ),
    Mutant(
        "tail-follow-ignores-topic",
        "The command takes a thread's topic wherever it takes THREAD (tail -f too)",
        "cli.py",
        'if getattr(args, "threads", None):',
        "if None:",
        ("tests/test_person.py::test_tail_follow_takes_a_topic",),
    ),
    Mutant(
        "mine-lists-own-questions",
        "task_list(mine=true): the questions others asked you or anyone, not your own",
        "coordination/board.py",
        "if q.sender != mine and (not q.to or mine in q.to)]",
        "if (not q.to or mine in q.to)]",
        ("tests/test_contract.py::test_task_list_mine_shows_what_i_hold_and_what_i_can_take",),
    ),
]


def copy_src(into: Path) -> Path:
    """Copy src/ into the folder into; return the copy's src folder."""
    src = into / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def apply(src: Path, m: Mutant) -> str | None:
    """Apply mutant m to the copy at src; return why it cannot be applied, or None."""
    path = src / "mailslot" / m.file
    text = path.read_text(encoding="utf-8")
    found = text.count(m.old)
    if found != 1:
        return f"its text occurs {found} times in src/mailslot/{m.file} (the code moved?)"
    path.write_text(text.replace(m.old, m.new), encoding="utf-8")
    return None


def run_tests(src: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str, float]:
    """Run pytest on tests against the copy at src; return its exit code, output tail, time."""
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
    probe = subprocess.run(
        [sys.executable, "-c", "import mailslot; print(mailslot.__file__)"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    if not probe.stdout.strip().startswith(str(src)):
        sys.exit(f"mutants: PYTHONPATH does not win: mailslot comes from {probe.stdout.strip()}")
    argv = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    began = time.monotonic()
    try:
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
        code, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        partial = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
        code, out = -1, f"timed out after {timeout} s\n{partial or ''}"
    tail = "\n".join(line for line in str(out).splitlines()[-15:] if line.strip())
    return code, tail, time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", help="run only mutants whose name contains one of these")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's output")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or any(o in m.name for o in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name}  ({m.file})\n  {m.claim}\n  " + "\n  ".join(m.tests))
        return 0
    if not chosen:
        print(f"no mutant matches {args.only}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="mailslot-mutants-") as scratch:
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            print(f"baseline: {len(tests)} test selections against an unchanged copy ...",
                  flush=True)  # fmt: skip
            code, tail, took = run_tests(copy_src(Path(scratch) / "base"), tests, args.timeout)
            if code != 0:
                print(f"the tests fail without any mutant (exit {code}):\n{tail}")
                return 1
            print(f"baseline passed in {took:.0f} s", flush=True)

        rows = []
        for n, m in enumerate(chosen):
            src = copy_src(Path(scratch) / f"m{n}")
            stale = apply(src, m)
            if stale is not None:
                rows.append((m, "STALE", stale, 0.0))
                print(f"{m.name}: STALE, {stale}", flush=True)
                continue
            code, tail, took = run_tests(src, m.tests, args.timeout)
            if code == 0:
                verdict = "survived"
            elif code in (1, -1):  # tests failed, or hung past the timeout
                verdict = "killed"
            else:  # usage error, nothing collected, interrupted: no verdict
                verdict = f"ERROR (pytest exit {code})"
            rows.append((m, verdict, tail, took))
            print(f"{m.name}: {verdict} in {took:.0f} s", flush=True)
            if args.verbose or verdict.startswith("ERROR"):
                print("    " + tail.replace("\n", "\n    "), flush=True)

    width = max(len(m.name) for m, *_ in rows)
    print(f"\n| {'mutant':<{width}} | file | result | time | claim |")
    print(f"|{'-' * (width + 2)}|---|---|---|---|")
    for m, verdict, _, took in rows:
        print(f"| {m.name:<{width}} | {m.file} | {verdict} | {took:.0f} s | {m.claim} |")
    killed = sum(v == "killed" for _, v, *_ in rows)
    print(f"\n{killed} of {len(rows)} mutants killed")
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())

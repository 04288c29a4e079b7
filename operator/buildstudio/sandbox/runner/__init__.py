"""The sandbox runner: opencode headless against a local model, watched, with a git diff at the end.

Runs inside the sandbox pod (``python -m buildstudio.sandbox.runner --spec FILE``) or as a local process
(``buildstudio run --local``). It imports nothing of kopf or kubernetes: the image stays lean.

Command line::

    python -m buildstudio.sandbox.runner --spec SPEC.json [--workspace DIR] [--home DIR] [--opencode-bin PATH]

``--workspace`` defaults to ``$BUILDSTUDIO_WORKSPACE`` then ``/workspace``; ``--home`` to ``$HOME``
(opencode's per-run HOME/XDG dirs, config and the prompt file go there); the binary to
``$OPENCODE_BIN`` then ``opencode`` on PATH. SPEC.json is a ``spec.RunnerSpec`` (camelCase).

What it does: clone ``repo.url@repo.ref`` into the workspace (or take the git repo already there),
record the base commit, write ``$XDG_CONFIG_HOME/opencode/opencode.json``, optionally start the
tool-call repair relay in front of the model service, start
``opencode run --dir WS -m local/MODEL --format json --dangerously-skip-permissions ""`` with the
prompt as stdin (a file: verbatim at any size, never through a shell), fold its events, stop it on
any watchdog limit or SIGTERM, kill every process the run started, and diff the workspace.

stdout (the pod log) — one JSON object a line, ``buildstudio.protocol.records``, each with ``kind`` and ``v``:

- ``progress`` (at most every ``output.progressIntervalSeconds``, plus stage changes):
  ``stage`` preparing|cloning|running|diffing, ``elapsedSeconds``, ``steps``, ``toolCalls``,
  ``tokens``, ``lastTool``, ``message``;
- ``event`` — ``type`` step|tool|text|error|watchdog|repair and a one-line ``message`` (≤ 512
  chars). At most ``output.maxEventRecords``; past the cap one ``watchdog`` event says so, and one
  more before the result gives the count not printed. All records together stay under
  ``output.maxOutputBytes`` (room is kept for the result);
- ``result`` — exactly one, last, in every ending (success, failure, timeout, cancel, bad spec):
  ``outcome`` (``records.Outcome``), ``message``, ``exitCode`` (opencode's), ``summary``,
  ``diffStat``, ``diff`` (bounded excerpt), ``diffBytes``, ``diffTruncated``, ``patch`` (whole
  diff, gzip+base64, capped), ``baseCommit``, times, and ``replay`` (true when the model's words
  were canned).

Exit status: 0 when the outcome is a success, 1 otherwise, 2 when the spec could not be read.
"""

"""The CLI's commands: ``run --local`` (``local``), the cluster commands (``cluster``), the
preflight command, the replay model server, and the one-line errors with their exit codes."""

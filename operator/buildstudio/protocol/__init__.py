"""What the sandbox and the operator exchange: the runner spec (operator → sandbox), the records
the sandbox writes (sandbox → operator), and the stream decoders both sides read them with.

Plain data and pure decoders; imports nothing of ours but ``buildstudio.api``.
"""

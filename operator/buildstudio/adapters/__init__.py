"""Adapters: every IO the operator and the CLI do, each behind one module with explicit timeouts.

The Kubernetes API (``kube``), the model services (``modelservice``), git (``gitdiff``), name
resolution (``netresolve``), metrics and the engine registry file. They carry data in and out;
what to do with it is decided in ``buildstudio.core``.
"""

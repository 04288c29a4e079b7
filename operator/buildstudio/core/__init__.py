"""Pure, synchronous decisions of the operator: plain data in, plain data out, no IO.

Handlers (``buildstudio.handlers``) read Kubernetes, call these functions and write the
results back; everything here is unit-tested without a cluster.
"""

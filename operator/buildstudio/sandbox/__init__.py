"""The sandbox side: what runs inside the sandbox pod (or as local processes for ``run --local``).

``runner``: the roles of the pod's containers (clone, agent, reporter, push) and the local runner;
``relay``: the model proxy (tool-call repair, credential injection). Nothing here imports kopf or
a Kubernetes client: the sandbox image stays lean and holds no cluster credential.
"""

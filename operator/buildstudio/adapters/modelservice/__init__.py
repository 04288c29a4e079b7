"""The model services over HTTP: the preflight probe (per backend), its cache, the smoke request,
one chat completion (``textgen``) and a text phase run end to end (``textrun``)."""

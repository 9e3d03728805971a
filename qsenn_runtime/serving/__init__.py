"""Serving exported models over the Open Inference Protocol (KServe v2 REST, as Triton speaks it).

`protocol` (the wire format), `batcher` (dynamic batching), `endpoint` (one served model) and
`triton_config` need only numpy; `app` and `server` import starlette and uvicorn (the `serve`
extra), so the remote client and the Triton export can use the rest without them.
"""

"""The hostile-peer suite (issue 21): every byte from the broker is hostile.

Each module starts one site (tests/hostile/site.py: a private vhost, ``setevnt-dispatcher
serve --policy``, an enrolled client running ``setevnt-agent run``, two service users)
and sends batches as one peer: the client's own credentials (test_client_forgeries.py),
a service user (test_service_requests.py, test_service_spread.py), the dispatcher's path
into an agent's queue (test_agent_queue.py). After each batch (tests/hostile/observe.py):

- every consumer still consumes (setevnt.acks, setevnt.fleet, setevnt.requests, the
  agent's queue) and ``serve`` and the agent still run;
- the metric series did not grow with what the messages said: no label of ``serve``'s
  /metrics took values outside the closed sets (catalog, schema enums) beyond a few fixed
  names a fix may add;
- the ledger's commands and storms grew by exactly what accepted requests and the genuine
  traffic account for, and no more was counted published than dispatchers published;
- ``setevnt --client ID CQMGR32_STARTCYCLE --wait 30`` answers ``done``, and a genuine
  request (another service user's) is accepted and its summary says ``done``.

Everything, with the figures tables printed and written to
``/tmp/hostile/hostile-figures/<module>.md``:

    CI=true .venv/bin/python -m pytest tests/hostile -rP --basetemp /tmp/hostile
"""

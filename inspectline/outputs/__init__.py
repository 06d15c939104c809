"""Results to the line: part verdicts delivered to MQTT, OPC UA and webhooks through a durable outbox.

    outbox.py      SQLite outbox: per-line sequence numbers, one cursor per output, refused verdicts
    dispatcher.py  one delivery thread per (line, output): in order, retried with backoff, metrics
    mqtt.py        paho-mqtt publisher: a topic per line, QoS 1, optional retained last verdict
    opcua.py       asyncua server: last part id, verdict, reason, sequence, result-ready / acknowledge
    webhook.py     httpx POST with idempotency headers; 4xx refused for good, the rest retried
    line.py        LineResults: frame verdicts -> PartAggregator -> outbox -> outputs (what the service runs)

Nothing is imported here, so ``inspect`` starts without paho-mqtt or asyncua (``pip install
'inspectline[line]'``); import the modules.
"""

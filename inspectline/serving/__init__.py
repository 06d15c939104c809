"""The Ray Serve application: HTTP gateway, inspector replicas, deployment helpers.

Importing this package imports Ray; the rest of inspectline (Predictor, training) does not need it.
"""

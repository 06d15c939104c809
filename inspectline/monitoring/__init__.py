"""Line monitoring: Prometheus metric definitions, drift references and detectors."""

"""Camera adapters: get frames from a line's cameras to the inspection service without losing one.

    source.py    the source interface: Frame (ids, capture time, part id), Outcome, settle(), progress state
    folder.py    hot folder: files taken once completely written, then moved to done/ or failed/
    video.py     OpenCV capture: video file, RTSP/HTTP stream or device; frame-rate limit; reconnects
    replay.py    a dataset (ELPV, folder, manifest) replayed at a frame rate, with injectable shifts
    uploader.py  one POST /v1/frames attempt and what its answer means; backoff with jitter
    spool.py     the fsynced disk spool, in capture order; quarantine/ for frames the service fails on
    delivery.py  several posts in flight, settled in capture order; outages; quarantine after repeated 5xx
    results_log.py  JSON lines per settled frame, in capture order, rotated by size or day
    runner.py    run_camera / run_adapter: capture thread, memory queue + spool, delivery, metrics
                 (``inspectline.monitoring.metrics.CameraMetrics``)
    cli.py       ``inspect camera folder|video|replay``

Nothing is imported here, so ``inspect`` starts without OpenCV or the datasets; import the modules.

Adding a source (for example GenICam / GigE Vision cameras through ``harvesters``): write a class
with ``frames(stop)`` yielding :class:`~inspectline.camera_adapters.source.Frame` objects in capture
order and ``settle(frame, outcome)``, a frozen settings model for it, and a branch in
``runner.create_source``. For GenICam: open the device with ``harvesters.core.Harvester`` (its GenTL
producer ``.cti`` file is vendor software, given by path in the settings), take buffers with
``fetch()``, encode each with ``cv2.imencode(".png", ...)`` and use the camera's frame id or
timestamp from the buffer as the frame id, so ids stay unique across adapter restarts. It is not
shipped: ``harvesters`` installs from PyPI, but without a producer and a camera it cannot be tested here.
"""

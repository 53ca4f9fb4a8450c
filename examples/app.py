"""The example application declared in Python: ResNet-50 and BERT-base co-located on one GPU.

    python examples/app.py                 # a local Ray instance, serving until Ctrl-C
    serve run examples.app:app             # the same app with Ray Serve's CLI (from the repository root; for its
                                           # HAProxy front start Ray with RAY_SERVE_ENABLE_HA_PROXY=1, else the
                                           # app warns and Serve's proxy serves it)

It is the application of deployments/example.yaml: KServe v2 over HTTP on port
8000 and over gRPC on port 9000. Models load in the background: GET
/v2/health/ready answers 200 once both are up (with a warning for an SLO the
hardware cannot meet, e.g. these GPU SLOs on the CPU backend). Then try
`python examples/client.py --grpc 127.0.0.1:9000`.
"""

import os

from eclip_ray.serve import AppConfig, ModelConfig, build_app, front_env

config = AppConfig(
    gpus=1,  # one GPU actor; without a GPU it runs the CPU backend
    front="haproxy",  # HAProxy to the ingress replicas: a setting of the Ray cluster, made below
    models=[
        # Example SLOs for a GPU; batching never waits past what the SLO leaves.
        ModelConfig(name="resnet50", max_batch_size=8, batch_wait_timeout_s=0.005, slo_ms=50),
        ModelConfig(name="bert-base", max_batch_size=8, batch_wait_timeout_s=0.005, slo_ms=100),
    ],
)
if __name__ == "__main__":  # the Ray that main() starts reads its front from this process's environment
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from a local example (set 1 to allow)
    os.environ.update(front_env(config.front))
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")  # Ctrl-C need not wait 30 s
app = build_app(config)


def main() -> None:
    from ray import serve

    from eclip_ray.serve import run

    print(f"serving at http://{config.host}:{config.port}/v2 and gRPC {config.host}:{config.grpc_port} once Serve")
    print("is up; models are ready when /v2/health/ready says 200; Ctrl-C stops it")
    try:
        run(app, name="eclip-example", route_prefix="/", blocking=True)  # Ray, Serve with the app's options, the app
    except KeyboardInterrupt:
        serve.shutdown()


if __name__ == "__main__":
    main()
